#!/usr/bin/env bash
# Prepares what benchmarks/gpu.sh needs on an offline GPU machine whose Python (3.12) has torch
# but older transformers/peft and no trl: the wheels in .whl/ and, in .gpu/, Qwen2-1.5B's
# architecture (config.json written here) with the Qwen2 tokenizer of the cached
# qwen2.5-coder-0.5b-instruct (installed first if absent) and the SVAMP data. Both folders are
# kept out of git (.git/info/exclude); about 35 MB together.
#
#   bash benchmarks/gpu_carry.sh
#
# Then, on the GPU machine, in the checkout with .whl/ and .gpu/ beside it:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD/src TOKENRL_DATA=$PWD/.gpu/data PY=python3 ARCH=.gpu/qwen2-1.5b \
#     OUTDIR=out bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PY=.venv/bin/python
for d in .whl .gpu; do grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude; done
rm -rf .whl && mkdir -p .whl .gpu/qwen2-1.5b .gpu/data
# what tokenrl and TRL need beyond such an image (torch, numpy, pandas, pyarrow, ... are there)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl transformers==5.25.0 huggingface_hub==2.4.0 httpx2==2.16.2 httpcore2==2.16.2 \
  truststore h11 idna anyio click kernels==0.19.1 tomlkit peft==0.21.2 trl==1.16.0 datasets==5.2.0 \
  dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 math-verify==0.9.0 latex2sympy2_extended \
  antlr4-python3-runtime==4.13.2 gguf regex typing_extensions
"$PY" -m tokenrl.zoo qwen2.5-coder-0.5b-instruct >&2
src=$("$PY" -c "from tokenrl import zoo; print(zoo.cached_folder('qwen2.5-coder-0.5b-instruct'))")
cp "$src"/{tokenizer.json,tokenizer_config.json,chat_template.jinja,generation_config.json} .gpu/qwen2-1.5b/
"$PY" - "$src/config.json" .gpu/qwen2-1.5b/config.json <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c.pop("_model_name_or_path", None)
c.update(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
         num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=131072,
         rms_norm_eps=1e-6, layer_types=["full_attention"] * 28, max_window_layers=28)
json.dump(c, open(sys.argv[2], "w"), indent=1)
PY
data=$("$PY" -c "from tokenrl.tasks.data import find_data_dir; print(find_data_dir() or '')")
[ -n "$data" ] && cp -r "$data/svamp" .gpu/data/
du -sh .whl .gpu
