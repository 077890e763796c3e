#!/usr/bin/env bash
# The virtual environment RecTools' SASRec runs in (benchmarks/peers/rectools_sasrec.py): its own
# venv, so RecTools' pins never meet valuerec's. CPU torch first (see scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
[ -d .venv-rectools ] || "$PY" -m venv .venv-rectools
. .venv-rectools/bin/activate
pip install -q --upgrade pip "setuptools<81" wheel
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
pip install -q "rectools[torch]==0.19.0"
python -c "import rectools; print('rectools', rectools.__version__, 'in .venv-rectools')"
