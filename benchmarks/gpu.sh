#!/usr/bin/env bash
# tokenrl on one CUDA GPU with no network, Qwen2-1.5B's real architecture with random weights, bf16.
# Three measurements, each in fresh processes and each cut off after its own time limit, so one
# that hangs or fails cannot take the others with it:
#
# 1. step-svamp.json: one RL step per algorithm against the GPU's measured bounds (tokenrl bench
#    step: 4 SVAMP chat prompts x 8 completions x 64 tokens, the CPU benchmark's shape).
# 2. step-svamp-256.json: the same at a GPU-sized shape, 16 prompts x 8 completions x 256 tokens.
# 3. bench-gpu.json: the update's memory and speed, tokenrl (grpo, sgrpo, tspmo) against TRL 1.16
#    (hidden 1536, 28 layers, 12 heads, 2 kv heads, intermediate 8960, vocabulary 151,936, tied
#    embeddings; LoRA r 16 / alpha 32 on q,k,v,o,gate,up,down; 1 prompt of 256 tokens x 8
#    completions of exactly 1,024 tokens; gradient checkpointing on for both; memory =
#    torch.cuda.max_memory_allocated() during the update minus memory_allocated() before it;
#    1 warm-up, then 3 (memory) / 5 (speed) repeats; workload gpu-1.5b in benchmarks/trl/workloads.py).
#
#   bash benchmarks/gpu.sh                       # needs: pip install -e .[bench], a CUDA torch
#   ARCH=DIR OUTDIR=runs/gpu bash benchmarks/gpu.sh
#
# ARCH: where the step benchmarks take the architecture and tokenizer (config.json + tokenizer
# files; default the hub id Qwen/Qwen2-1.5B, which needs the hub or its cache). The SVAMP data is
# found as everywhere (TOKENRL_DATA, ../shared/data). PY: the interpreter (default .venv/bin/python,
# else python). Results go to OUTDIR (default runs/gpu); about 8 minutes on an H200.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
ARCH=${ARCH:-Qwen/Qwen2-1.5B}
OUTDIR=${OUTDIR:-runs/gpu}
DEVICE=${DEVICE:-cuda}            # DEVICE=cpu WORKLOADS=tiny ARCH=<small config>: a smoke run here
WORKLOADS=${WORKLOADS:-gpu-1.5b}
mkdir -p "$OUTDIR"
export OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
DEVICE=$DEVICE "$PY" - <<'PY' || exit 1
import os, sys

import torch, transformers, peft
if os.environ["DEVICE"] == "cuda" and not torch.cuda.is_available():
    sys.exit("benchmarks/gpu.sh needs a CUDA GPU (torch.cuda.is_available() is False)")
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print(f"GPU: {gpu}, torch {torch.__version__}, transformers "
      f"{transformers.__version__}, peft {peft.__version__}", file=sys.stderr)
PY
step() {  # NAME LIMIT ARGS...: one tokenrl bench step, its JSON to OUTDIR/NAME.json
  local name=$1 limit=$2
  shift 2
  echo "== $name" >&2
  timeout "$limit" "$PY" -m tokenrl bench step --model "random:$ARCH" --device "$DEVICE" --dtype bf16 \
    --task svamp --json "$@" > "$OUTDIR/$name.json" || echo "$name: failed or cut off ($?)" >&2
  [ -s "$OUTDIR/$name.json" ] || return 0
  "$PY" - "$OUTDIR/$name.json" <<'PY' || true
import json, sys
out = json.load(open(sys.argv[1]))
m, s = out["machine"], out["shape"]
print(f"{m.get('gpu') or m['cpu']}: GEMM bf16 {m['gemm_bf16_flops'] / 1e12:.0f} TFLOP/s, read {m['read_bytes_per_s'] / 1e12:.2f} TB/s; "
      f"{s['prompts']} x {s['group']} x {s['new_tokens']} tokens")
for r in out["algorithms"]:
    print(f"{r['algo']}: step {r['step_s']:.2f} s, generate {r['generate_s']:.2f} s ({r['decode_of_bound']:.3f} of bound, "
          f"{r['generate_tokens_per_s']:.0f} tokens/s), update {r['update_s']:.2f} s "
          f"({r['update_of_bound'] or 0:.3f} of bound), update peak {r['update_peak_cuda_mb'] or 0:.0f} MB")
PY
}
step step-svamp 120
echo "== TRL comparison (update)" >&2
timeout 270 "$PY" -m tokenrl bench all --workloads "$WORKLOADS" --device "$DEVICE" --dtype bf16 --threads 8 \
  --timeout 100 --out "$OUTDIR/bench-gpu.json" || echo "bench all: failed or cut off ($?)" >&2
step step-svamp-256 150 --max-new-tokens 256 --set rollout.prompts_per_step=16
