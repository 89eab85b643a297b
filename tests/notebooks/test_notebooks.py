"""The notebooks under notebooks/: kept stripped in git, and executed end to end (a cell that raises
fails the test), each in a temporary copy so nothing is written into the repository.

The kernel is this interpreter (the venv's python with ipykernel), named by a kernel spec written
for the test, so a notebook never runs in whatever `python3` kernel a machine has registered."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.notebooks.strip import problems
from tests.support import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
#: Per cell; the whole notebook is bounded by the test's own timeout.
CELL_TIMEOUT_S = 300


def test_the_issue_s_notebooks_are_there() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"tutorial.ipynb", "ranking_models.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_notebook_is_stripped(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert problems(nb) == [], f"run: .venv/bin/python -m tests.notebooks.strip {path.relative_to(REPO)}"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "jupyter" / "kernels" / "recsys-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "recsys", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    work = tmp_path / "run"
    work.mkdir()
    copy = work / path.name
    shutil.copy(path, copy)
    nb = nbformat.read(copy, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="recsys-test",
        resources={"metadata": {"path": str(work)}},
    )
    started = time.perf_counter()
    try:
        client.execute()
    finally:
        # kept beside the copy (in the test's temporary directory) to read what a failed cell said
        nbformat.write(nb, work / f"{path.stem}.executed.ipynb")
    print(f"{path.name}: {time.perf_counter() - started:.0f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
