#!/usr/bin/env bash
# Memory and speed of one policy update, tokenrl (grpo, sgrpo, tspmo) against TRL 1.16, on one
# CUDA GPU with no network: Qwen2-1.5B's real architecture (hidden 1536, 28 layers, 12 heads,
# 2 kv heads, intermediate 8960, vocab 151,936, tied embeddings) with random weights, bf16,
# LoRA r 16 / alpha 32 on q,k,v,o,gate,up,down, 1 prompt of 256 tokens x 8 completions of exactly
# 1,024 tokens, gradient checkpointing on for both (workload gpu-1.5b in benchmarks/trl/workloads.py).
# Memory = torch.cuda.max_memory_allocated() during the update minus memory_allocated() before it.
# Each configuration runs in a fresh process: 1 warm-up, then 3 (memory) / 5 (speed) repeats.
# Expected wall time on an H100: about 4-5 minutes (8 processes; each configuration is cut
# off after --timeout seconds, so a hang cannot hold the machine). Prints one table and writes
# runs/bench-gpu.json.
#
#   bash benchmarks/gpu.sh              # needs: pip install -e .[bench] (trl==1.16.0), CUDA torch
#   PY=python bash benchmarks/gpu.sh    # another interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
export OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$PY" - <<'PY'
import torch, sys
if not torch.cuda.is_available():
    sys.exit("benchmarks/gpu.sh needs a CUDA GPU (torch.cuda.is_available() is False)")
print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", file=sys.stderr)
PY
mkdir -p runs
"$PY" -m tokenrl bench all --workloads gpu-1.5b --device cuda --dtype bf16 --threads 8 \
  --timeout 100 --out runs/bench-gpu.json "$@"
