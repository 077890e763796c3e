#!/usr/bin/env bash
# The virtual environment a peer runs in: .venv-LIBRARY, its own venv, so the peer's pins never meet
# valuerec's. CPU torch first (see scripts/setup.sh).
#   bash benchmarks/peers/setup.sh rectools   # RecTools' SASRec (benchmarks/peers/rectools_sasrec.py)
#   bash benchmarks/peers/setup.sh recbole    # RecBole's SASRec (benchmarks/peers/recbole_sasrec.py)
set -euo pipefail
cd "$(dirname "$0")/../.."
LIB=${1:?usage: setup.sh rectools|recbole}
case "$LIB" in
  rectools) PKGS=("rectools[torch]==0.19.0") ;;
  recbole)  PKGS=("recbole==1.2.1" "numpy<2" "pandas<3" "ray<2.10") ;;   # RecBole 1.2 predates numpy 2 and pandas 3
  *) echo "setup.sh: unknown peer library $LIB (rectools or recbole)" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
[ -d ".venv-$LIB" ] || "$PY" -m venv ".venv-$LIB"
. ".venv-$LIB/bin/activate"
pip install -q --upgrade pip "setuptools<81" wheel
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
pip install -q "${PKGS[@]}"
python -c "import $LIB; print('$LIB', $LIB.__version__, 'in .venv-$LIB')"
