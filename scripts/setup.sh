#!/usr/bin/env bash
# Create .venv and install valuerec with everything its demo, benchmarks and tests use.
# torch 2.13.0 first: an unpinned torch would pull a multi-GB CUDA build (GPU users: install your own
# torch first; any 2.x in the project's range works).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip "setuptools<81" wheel
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
pip install -q -e ".[all,test]"
echo "valuerec installed in .venv ($(python -c 'import valuerec; print(valuerec.__version__)'))"
