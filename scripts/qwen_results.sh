#!/usr/bin/env bash
# Reproduces the Qwen2.5-Coder-0.5B runs of docs/results.md (issue #24): LoRA + grpo (two
# learning rates), sgrpo and tspmo on 3-digit x 1-digit or 2x2-digit multiplication, the task
# chosen from the base-accuracy calibration (benchmarks/base_accuracy.py: pass@8 in 20-80%).
#
#   scripts/qwen_results.sh [TASK [SEED [SPECS]]]   (default TASK=multiplication:3x1, SEED=0)
#   scripts/qwen_results.sh svamp 0 "grpo:1e-4 sgrpo:1e-4 tspmo:1e-4"   # configs/qwen0.5b/svamp_*.yaml
#   MODEL=1.5b scripts/qwen_results.sh multiplication:2x2 0 "grpo:1e-4 sgrpo:1e-4 tspmo:1e-4"
#
# SPECS: the ALGO:LR runs (default "grpo:1e-4 grpo:1e-5 sgrpo:1e-4 tspmo:1e-4"). SVAMP runs are
# about 50 minutes each alone on 2 cores (the configs' calibration): three at once took about 1 h
# 50 min (stop 31, each evaluating the base itself). The runs of one call now evaluate the base
# once (train.share_base_eval: the others wait for the first one's result and reuse it).
#
# The four runs train at once, one thread each (how they were measured on a 2-core machine), into
# runs/qwen/<NAME>; a finished run is skipped, a killed one resumes. Afterwards `tokenrl compare`
# writes runs/qwen/<task>-s<SEED>/compare.{md,png}, and each run's eval.json, config.yaml and
# metrics.jsonl are copied to docs/results/<NAME>/ (the adapters stay in runs/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
TASK=${1:-multiplication:3x1}
SEED=${2:-0}
MODEL=${MODEL:-0.5b}  # configs/qwen$MODEL/
SHORT=$(echo "$TASK" | sed 's/multiplication:/mult-/')
mkdir -p runs/qwen
names=()
SPECS=${3:-grpo:1e-4 grpo:1e-5 sgrpo:1e-4 tspmo:1e-4}
for spec in $SPECS; do
  algo=${spec%%:*}; lr=${spec##*:}
  name=qwen$MODEL-$SHORT-$algo-lr$lr-s$SEED
  names+=("$name")
  out=runs/qwen/$name
  if [ -f "$out/adapter/adapter_config.json" ]; then continue; fi
  if [ -d "$out" ]; then args=(--resume "$out"); else
    if [ "$TASK" = svamp ]; then config=(configs/qwen$MODEL/svamp_$algo.yaml); else
      config=(configs/qwen$MODEL/multiplication_$algo.yaml --task.name "$TASK"); fi
    args=("${config[@]}" --optim.lr "$lr" --train.seed "$SEED" --log.progress false --out "$out"); fi
  .venv/bin/tokenrl train "${args[@]}" --threads 1 > "runs/qwen/$name.log" 2>&1 &
done
wait
.venv/bin/tokenrl compare "${names[@]/#/runs/qwen/}" --out "runs/qwen/$MODEL-$SHORT-s$SEED"
for name in "${names[@]}"; do
  mkdir -p "docs/results/$name"
  cp "runs/qwen/$name/"{eval.json,config.yaml,metrics.jsonl} "docs/results/$name/"
done
