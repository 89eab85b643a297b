"""MovieLens 100k accuracy benchmark on the published comparison's protocol (issue 3).

Fetches the data with ../shared/scripts/get-ml100k.sh when it is missing (never committed), runs the
two-stage pipeline and the baselines for three seeds of python_stratified_split(ratio=0.75, by item),
prints the table against the published rows, and writes bench/results/accuracy_ml100k.json plus the
full report (report.md, PNGs) under bench/results/accuracy_ml100k/.

    .venv/bin/python bench/accuracy_ml100k.py [--seeds 42 43 44] [--data DIR] [--set NAME=VALUE ...]

`--validate` runs the validation protocol settings are chosen on instead: each seed's train split again
with seed 9999 (the pipeline, stacking included, runs inside that train; no test split is read).
Earlier rounds validated on seed 42's train only (`--validate --seeds 42`).
`--set` overrides an `OfflineConfig` field (e.g. `--set candidates=300 --set fused=ease,cooc`) to compare
variants on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.trainer import report  # noqa: E402
from services.trainer.data import load  # noqa: E402
from services.trainer.offline import OfflineConfig, run, summarize  # noqa: E402
from services.trainer.splits import stratified_split  # noqa: E402

SCRIPT = ROOT.parent / "shared" / "scripts" / "get-ml100k.sh"
CACHE = Path.home() / ".cache" / "recsys" / "ml-100k"
VALIDATION_SEED = 9999


def overrides(pairs: list[str]) -> OfflineConfig:
    """OfflineConfig with NAME=VALUE pairs applied, each value parsed as its field's type."""
    defaults = OfflineConfig()
    changes: dict[str, object] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        try:
            if not sep:
                raise KeyError(name)
            changes[name] = OfflineConfig.parse_field(name, raw)
        except KeyError:
            sys.exit(f"--set {pair!r}: expected NAME=VALUE with NAME a field of OfflineConfig")
        except ValueError as error:
            sys.exit(f"--set {pair!r}: {error}")
    try:
        return dataclasses.replace(defaults, **changes)  # type: ignore[arg-type]
    except ValueError as error:
        sys.exit(f"--set {' '.join(pairs)}: {error}")


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
    parser.add_argument("--validate", action="store_true", help="the validation protocol (see above)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    config = overrides(args.overrides)
    started = time.perf_counter()
    data = load(ensure_data(args.data))
    progress = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.validate:
        name = "accuracy_ml100k_validation"
        runs = []
        for outer in args.seeds:
            train, _ = stratified_split(data.log, 0.75, filter_by="item", seed=outer)
            runs.append(run(dataclasses.replace(data, log=train), config, [VALIDATION_SEED], progress))
            runs[-1]["per_seed"][0]["outer_seed"] = outer
        result = {**runs[0], "per_seed": [r["per_seed"][0] for r in runs], "outer_seeds": args.seeds}
        result["summary"] = summarize(result["per_seed"])
    else:
        name = "accuracy_ml100k"
        result = run(data, config, args.seeds, progress)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["overrides"] = args.overrides
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    report.write(result, args.out / name)
    print(report.markdown(result))
    print(f"wall time {result['wall_seconds']:.0f} s; written {args.out / f'{name}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
