#!/usr/bin/env bash
# Reproduces docs/results.md: SmolLM2-135M-Instruct + LoRA, grpo / sgrpo / tspmo on 2x1-digit
# multiplication and on SVAMP (ChilleD 300 test problems), plus GRPO at two higher learning rates
# (50 steps each, to compare with mult-grpo's evaluation at step 50).
#
#   scripts/results.sh [OUT [NAME...]]   (default OUT=runs/results, all runs; each in OUT/<NAME>)
#
# JOBS=2 runs two trainings at a time with one thread each (how docs/results.md was measured on
# a 2-core machine); the default JOBS=1 runs them one after another with two threads each
# (THREADS=N overrides; RESULTS_NOTE=... is stored in each run's wall.json).
# A finished run is skipped when the script runs again; a killed one resumes. At the end
# `tokenrl compare` writes OUT/<task>/compare.{md,png} over the finished runs, and their small
# summaries (eval.json, config.yaml, metrics.jsonl, wall.json) are copied to docs/results/<NAME>/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
OUT=${1:-runs/results}
shift || true
JOBS=${JOBS:-1}
THREADS=${THREADS:-$((JOBS >= 2 ? 1 : 2))}
mkdir -p "$OUT"

# NAME CONFIG [extra arguments]. The SVAMP runs after the first skip the evaluation before
# training: it is greedy, on the same 300 problems with the same model, so it repeats
# svamp-sgrpo's base figure (about 9 minutes each on one thread). The configs cap completions
# at 64 tokens (the svamp-*-64 runs, about 45 minutes or less each on 2 threads; no correct
# greedy answer of the 120-token runs was over 25 tokens); svamp-tspmo-64 measures its own base,
# which svamp-grpo-64 and svamp-sgrpo-64 then skip.
RUNS="mult-sgrpo configs/smollm2/multiplication_sgrpo.yaml
mult-grpo configs/smollm2/multiplication_grpo.yaml
mult-tspmo configs/smollm2/multiplication_tspmo.yaml
mult-grpo-lr3e-4-50steps configs/smollm2/multiplication_grpo.yaml --optim.lr 3e-4 --train.steps 50
mult-grpo-lr1e-3-50steps configs/smollm2/multiplication_grpo.yaml --optim.lr 1e-3 --train.steps 50
svamp-sgrpo configs/smollm2/svamp_sgrpo.yaml --rollout.max_new_tokens 120
svamp-grpo configs/smollm2/svamp_grpo.yaml --rollout.max_new_tokens 120 --train.eval_before false
svamp-tspmo configs/smollm2/svamp_tspmo.yaml --rollout.max_new_tokens 120 --train.eval_before false
svamp-tspmo-64 configs/smollm2/svamp_tspmo.yaml
svamp-grpo-64 configs/smollm2/svamp_grpo.yaml --train.eval_before false
svamp-sgrpo-64 configs/smollm2/svamp_sgrpo.yaml --train.eval_before false"
if [ $# -gt 0 ]; then
  RUNS=$(echo "$RUNS" | grep -E "^($(IFS='|'; echo "$*")) ")
fi

finished() { [ -f "$1/eval.json" ] && grep -q '"after"' "$1/eval.json"; }

one_run() {  # NAME CONFIG extra...
  local name=$1 config=$2; shift 2
  local dir="$OUT/$name"
  if finished "$dir"; then echo "$name: finished already"; return 0; fi
  local t0=$SECONDS
  if [ -d "$dir" ]; then  # killed earlier: continue from its last good checkpoint and saved config
    .venv/bin/tokenrl train --resume "$dir" --threads "$THREADS" >> "$OUT/$name.log" 2>&1
  else
    .venv/bin/tokenrl train "$config" "$@" --threads "$THREADS" --out "$dir" > "$OUT/$name.log" 2>&1
  fi
  printf '{"wall_seconds": %d, "threads": %d, "note": "%s"}\n' $((SECONDS - t0)) "$THREADS" "${RESULTS_NOTE:-}" > "$dir/wall.json"
  tail -n 1 "$OUT/$name.log"
}
export -f one_run finished
export OUT THREADS RESULTS_NOTE

echo "$RUNS" | xargs -P "$JOBS" -L 1 bash -c 'one_run "$@"' _

mkdir -p docs/results
for task in mult svamp; do
  runs=()
  for dir in "$OUT/$task"-*/; do
    finished "$dir" || continue
    runs+=("$dir")
    dest="docs/results/$(basename "$dir")"
    mkdir -p "$dest"
    cp "$dir"eval.json "$dir"config.yaml "$dir"metrics.jsonl "$dest"/
    for f in wall.json wall-killed.json; do  # wall-killed.json: a first attempt's time, kept by hand
      [ -f "$dir$f" ] && cp "$dir$f" "$dest"/
    done
  done
  [ ${#runs[@]} -gt 0 ] || continue
  .venv/bin/tokenrl compare "${runs[@]}" --out "$OUT/$task"
  cp "$OUT/$task/compare.md" "docs/results/$task-compare.md"
  cp "$OUT/$task/compare.png" "docs/results/$task-compare.png"
done
echo "summaries in docs/results/"
