#!/usr/bin/env bash
# The virtual environment RecBole's SASRec runs in (benchmarks/peers/recbole_sasrec.py): its own
# venv, so RecBole's pins never meet valuerec's. CPU torch first (see scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
[ -d .venv-recbole ] || "$PY" -m venv .venv-recbole
. .venv-recbole/bin/activate
pip install -q --upgrade pip "setuptools<81" wheel
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
pip install -q "recbole==1.2.1" "numpy<2" "pandas<3" "ray<2.10"   # RecBole 1.2 predates numpy 2 and pandas 3
python -c "import recbole; print('recbole', recbole.__version__, 'in .venv-recbole')"
