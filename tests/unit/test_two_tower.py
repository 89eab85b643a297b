"""The two-tower source beyond the contract suite (tests/unit/test_sources_contract.py): the numpy user
tower it serves with computes what the trained torch tower computes; serving needs no torch; and with
the extra `recsys[deep]` missing, a pipeline naming the source stops at once with a one-line message."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from tests.support import REPO
from tests.unit.test_sources_contract import export, fitted, params, small_slice

#: Makes every `import torch` in a subprocess raise ImportError, as when the extra is not installed.
NO_TORCH = "import sys; sys.modules['torch'] = None\n"


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH + textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def test_numpy_user_tower_equals_torch() -> None:
    import torch

    from services.trainer import two_tower

    s = small_slice()
    p = params("twotower")
    ex = two_tower.examples(s.data, p.window)
    torch.manual_seed(0)
    model = two_tower.Towers(
        torch.from_numpy(s.data.content),
        torch.rand(s.universe.n_items),
        p,
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    log_q = torch.zeros(s.universe.n_items)
    for start in range(0, 2048, 512):  # a few steps, so no weight is left at its initial value
        loss = two_tower.batch_loss(model, ex.take(np.arange(start, start + 512)), log_q, p)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    model.eval()
    sample = ex.take(np.arange(0, len(ex), 37))
    with torch.no_grad():
        expected = model.users(torch.from_numpy(sample.recent), torch.from_numpy(sample.prior)).numpy()
    tower = model.user_tower()
    pad = s.universe.n_items
    for row in range(len(sample)):
        recent = np.sort(sample.recent[row][sample.recent[row] != pad])
        got = tower.query(recent, int(sample.prior[row]))
        assert got is not None
        np.testing.assert_allclose(got, expected[row], rtol=0, atol=1e-5)


def test_the_served_source_loads_and_scores_without_torch(tmp_path: Path) -> None:
    s = small_slice()
    source = fitted("twotower")
    version = export(source, tmp_path)
    user = s.users[0]
    history = s.histories[user]
    rows, _ = source.scores(history).top(20, history.as_set)
    done = run_python(
        f"""
        import json
        from pathlib import Path
        import services.retrieval.service, services.ranking.service, services.gateway.service
        from services.common.artifacts import open_version
        from services.common.sources import source_class
        from services.common.sources.base import History
        history = History.of({history.items.tolist()})
        loaded = source_class("twotower").load(open_version(Path({str(tmp_path)!r}), {version.version!r}), {s.universe.n_items})
        rows, _ = loaded.scores(history).top(20, history.as_set)
        print(json.dumps(rows.tolist()))
        """,
        REPO,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == rows.tolist()


def test_without_the_deep_extra_a_pipeline_naming_the_source_says_which_extra(tmp_path: Path) -> None:
    done = run_python(
        f"""
        from services.cli import main
        sys.exit(main(["train", "--sources", "twotower,popular", "--out", {str(tmp_path / "artifacts")!r}, "--no-progress"]))
        """,
        tmp_path,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "recsys train: source twotower needs PyTorch, the optional extra recsys[deep]: pip install 'recsys[deep]'"
    ]
    assert not (tmp_path / "artifacts").exists()


def test_training_stops_early_and_keeps_the_best_epoch() -> None:
    """Validation recall after each epoch; training stops `patience` epochs after the best, and the
    towers returned are the best epoch's: served (numpy, over the whole catalogue, the user's other
    items excluded) they find the held-out items as often as that epoch did."""
    from services.trainer import two_tower

    s = small_slice()
    p = params("twotower", epochs=40, patience=2, learning_rate=3e-2)
    trained = two_tower.train(s.data, p)
    history = trained.validation_recall
    assert trained.best_epoch == int(np.argmax(history))
    assert len(history) < p.epochs  # a learning rate this high overfits the small slice: it stopped
    assert len(history) == trained.best_epoch + 1 + p.patience
    val, pad = trained.validation, s.universe.n_items
    hits = 0
    for row in range(len(val)):
        recent = np.sort(val.recent[row][val.recent[row] != pad])
        query = trained.tower.query(recent, int(val.prior[row]))
        assert query is not None
        scores = trained.vectors @ query
        target = scores[val.targets[row]]
        scores[s.data.matrix[val.users[row]].indices] = -np.inf
        hits += int((scores > target).sum() < p.validation_k)
    assert abs(hits / len(val) - history[trained.best_epoch]) <= 0.01
