"""`recsys evaluate` (offline benchmark report) and `recsys data fetch` (dataset download)."""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from services.trainer.data import DataError

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
#: sha256 of GroupLens' u.data (the same check as ../shared/scripts/get-ml100k.sh).
ML100K_UDATA_SHA256 = "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
DEFAULT_CACHE = Path.home() / ".cache" / "recsys" / "ml-100k"


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from services.trainer.cli import add_pipeline_arguments
    from services.trainer.protocols import PROTOCOLS

    parser.add_argument(
        "--data", type=Path, default=DEFAULT_CACHE, help="dataset (any `recsys train` input, or u.data dir)"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/evaluate"), help="report directory")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="stratified",
        help="split: stratified by item (the published comparison), each user's latest, or a global time cut",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[42, 43, 44], help="split seeds, one run each"
    )
    # the same pipeline flags as `recsys train`: one pipeline, one set of defaults
    add_pipeline_arguments(parser)


def evaluate_main(ns: argparse.Namespace) -> int:
    from services.common.sources.base import FitError
    from services.trainer import report
    from services.trainer.benchmark import run
    from services.trainer.cli import pipeline_from_args
    from services.trainer.data import load

    try:
        config = pipeline_from_args(ns, ns.protocol)
        data = load(Path(ns.data))
        result = run(data, config, ns.seeds, show=True)
    except (ValueError, DataError, FitError) as e:
        print(f"recsys evaluate: {e}", file=sys.stderr)
        return 2
    for path in report.write(result, Path(ns.out)):
        print(path)
    print(report.markdown(result).split("\n## ")[0])
    return 0


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True)
    fetch = sub.add_parser("fetch", help="download a dataset and check its sha256")
    fetch.add_argument("dataset", choices=["movielens-100k"], help="the dataset to download")
    fetch.add_argument("--url", default=ML100K_URL, help="zip URL (file:// works; GroupLens by default)")
    fetch.add_argument("--dest", type=Path, default=DEFAULT_CACHE, help="directory to unpack it into")
    fetch.add_argument("--sha256", default=ML100K_UDATA_SHA256, help="expected sha256 of u.data")


def fetch_movielens_100k(url: str, dest: Path, udata_sha256: str = ML100K_UDATA_SHA256) -> Path:
    """Download the GroupLens zip, check u.data's sha256, extract u.data, u.item, u.user into `dest`.

    Nothing is written to `dest` unless the checksum matches."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "ml-100k.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as f:
                shutil.copyfileobj(response, f)
        except OSError as e:
            raise DataError(f"cannot download {url}: {e}") from e
        try:
            with zipfile.ZipFile(archive) as z:
                members = {
                    Path(n).name: n for n in z.namelist() if Path(n).name in ("u.data", "u.item", "u.user")
                }
                if "u.data" not in members:
                    raise DataError(f"{url}: the archive has no u.data")
                payload: dict[str, Any] = {name: z.read(member) for name, member in members.items()}
        except zipfile.BadZipFile as e:
            raise DataError(f"{url}: not a zip archive ({e})") from e
        digest = hashlib.sha256(payload["u.data"]).hexdigest()
        if digest != udata_sha256:
            raise DataError(f"{url}: u.data sha256 {digest} does not match the expected {udata_sha256}")
    dest.mkdir(parents=True, exist_ok=True)
    for name, content in payload.items():
        (dest / name).write_bytes(content)
    return dest / "u.data"


def data_main(ns: argparse.Namespace) -> int:
    try:
        path = fetch_movielens_100k(ns.url, Path(ns.dest), ns.sha256)
    except DataError as e:
        print(f"recsys data fetch: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0
