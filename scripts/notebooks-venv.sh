#!/usr/bin/env bash
# Creates the Python environment the notebooks run in (.venv-notebooks, beside the repository's
# other ignored build outputs) unless it is already there, and prints its python's path.
# Used by tests/notebooks.rs and by anyone who wants to open notebooks/ in Jupyter:
#   bash scripts/notebooks-venv.sh && .venv-notebooks/bin/jupyter-lab notebooks/   # (pip install jupyterlab first)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${NOTEBOOKS_VENV:-.venv-notebooks}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import polars, matplotlib, nbclient, nbformat, ipykernel" 2>/dev/null; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-notebooks.txt >&2
fi
echo "$VENV/bin/python"
