"""Strip notebooks for git: no outputs, no execution counts, no per-cell or machine-specific metadata
(only the kernel's name and the language stay). The notebooks are kept stripped
(tests/notebooks/test_notebooks.py checks it); after running one in Jupyter:

    .venv/bin/python -m tests.notebooks.strip notebooks/*.ipynb
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nbformat

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
METADATA: dict[str, Any] = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}


def strip(nb: Any) -> Any:
    """`nb` (a nbformat NotebookNode) stripped in place, and returned."""
    nb.metadata = nbformat.from_dict(METADATA)
    for cell in nb.cells:
        cell.metadata = nbformat.from_dict({})
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def problems(nb: Any) -> list[str]:
    """What `strip` would change in `nb`, one line each (empty: it is stripped)."""
    out = [] if nb.metadata == METADATA else [f"notebook metadata {dict(nb.metadata)} (expected {METADATA})"]
    for i, cell in enumerate(nb.cells):
        if cell.metadata:
            out.append(f"cell {i}: metadata {dict(cell.metadata)}")
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            out.append(f"cell {i}: outputs or an execution count")
    return out


def main(paths: list[str]) -> int:
    for path in map(Path, paths):
        nb = nbformat.read(path, as_version=4)
        if problems(nb):
            nbformat.write(strip(nb), path)
            print(f"stripped {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
