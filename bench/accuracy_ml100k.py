"""MovieLens 100k accuracy benchmark on the published comparison's protocol (issue 3).

Fetches the data with ../shared/scripts/get-ml100k.sh when it is missing (never committed), runs the
two-stage pipeline and the baselines for three seeds of python_stratified_split(ratio=0.75, by item),
prints the table against the published rows, and writes bench/results/accuracy_ml100k.json plus the
full report (report.md, PNGs) under bench/results/accuracy_ml100k/.

    .venv/bin/python bench/accuracy_ml100k.py [--seeds 42 43 44] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.trainer import report  # noqa: E402
from services.trainer.data import load  # noqa: E402
from services.trainer.offline import OfflineConfig, run  # noqa: E402

SCRIPT = ROOT.parent / "shared" / "scripts" / "get-ml100k.sh"
CACHE = Path.home() / ".cache" / "recsys" / "ml-100k"


def ensure_data(path: Path) -> Path:
    if (path / "u.data").is_file():
        return path
    if not SCRIPT.is_file():
        sys.exit(f"no {path}/u.data and no {SCRIPT}: run `recsys data fetch movielens-100k` first")
    subprocess.run(["bash", str(SCRIPT), str(path)], check=True, stdout=subprocess.DEVNULL)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=CACHE)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    started = time.perf_counter()
    data = load(ensure_data(args.data))
    result = run(
        data, OfflineConfig(), args.seeds, progress=lambda msg: print(msg, file=sys.stderr, flush=True)
    )
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy_ml100k.json").write_text(json.dumps(result, indent=1) + "\n")
    report.write(result, args.out / "accuracy_ml100k")
    print(report.markdown(result))
    print(f"wall time {result['wall_seconds']:.0f} s; written {args.out / 'accuracy_ml100k.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
