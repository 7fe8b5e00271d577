"""Executes notebooks headless (nbclient), in their own folder, and fails on the first that raises.

    .venv-notebooks/bin/python scripts/run_notebooks.py notebooks/*.ipynb

The notebooks read their inputs from environment variables (SIFT_ABLATE_DIR, SIFT_FIG6_DIR,
SIFT_GRAD_STATS_DIR; see each notebook's first cell). The notebooks on disk are not modified.
"""
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main(paths):
    if not paths:
        sys.exit("usage: run_notebooks.py NOTEBOOK.ipynb...")
    for path in map(Path, paths):
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute()
        except CellExecutionError as e:
            print(f"{path}: a cell raised:\n{e}", file=sys.stderr)
            sys.exit(1)
        print(f"{path}: {len(nb.cells)} cells executed")


if __name__ == "__main__":
    main(sys.argv[1:])
