"""What the tools that choose settings share: the validation protocol and how variants are written.

A validation split is an outer seed's train split of the published protocol (stratified 75/25 by item)
split again the same way with an inner seed: the pipeline fits on the inner train and is scored on the
inner holdout, so no test split is ever read. The catalogue is limited to the inner train's items, as
the benchmark limits it to the train split's.

A variant is `NAME:SETTING=VALUE[,SETTING=VALUE...]` with SETTING any pipeline setting
(`PipelineConfig.with_setting`: `ease.lam`, `fusion.candidates`, `ranker.rounds`, `sources`, ...); a
comma followed by SETTING= starts the next one, so a tuple value keeps its commas.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from services.trainer.data import Dataset, Log, load
from services.trainer.evaluate_cli import DEFAULT_CACHE
from services.trainer.pipeline import PipelineConfig
from services.trainer.protocols import Protocol
from services.trainer.splits import stratified_split

#: Nine splits: the trains of seeds 42, 43, 44, each split again with three inner seeds.
NINE_SPLITS = tuple(f"{outer}:{inner}" for inner in (9999, 9998, 9997) for outer in (42, 43, 44))
#: The inner split keeps this share of the test protocol's train, as the test protocol keeps of the data.
INNER_SHARE = 0.75


def base_config(inner: int) -> PipelineConfig:
    """The defaults, on the benchmark's protocol, seeded with the split's inner seed."""
    return PipelineConfig(protocol=Protocol(name="stratified"), seed=inner)


def parse_variant(text: str) -> tuple[str, list[tuple[str, str]]]:
    """'NAME:SETTING=VALUE,...' -> (NAME, [(SETTING, VALUE), ...]), each checked against the defaults."""
    name, sep, body = text.partition(":")
    if not sep or not name or not body:
        sys.exit(f"--variant {text!r}: expected NAME:SETTING=VALUE[,SETTING=VALUE...]")
    pairs: list[tuple[str, str]] = []
    for pair in re.split(r",(?=[\w.]+=)", body):
        setting, sep, raw = pair.partition("=")
        if not sep:
            sys.exit(f"--variant {text!r}: {pair!r} is not SETTING=VALUE")
        pairs.append((setting, raw))
    try:
        apply(base_config(0), pairs).check()
    except ValueError as error:
        sys.exit(f"--variant {text!r}: {error}")
    return name, pairs


def apply(config: PipelineConfig, pairs: Sequence[tuple[str, str]]) -> PipelineConfig:
    for setting, raw in pairs:
        config = config.with_setting(setting, raw)
    return config


def read_variants(texts: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """The defaults (no changes) and each --variant, by name."""
    return dict([("defaults", []), *(parse_variant(v) for v in texts)])


def add_arguments(parser: argparse.ArgumentParser, splits: Sequence[str]) -> None:
    parser.add_argument("--data", type=Path, default=DEFAULT_CACHE, help="MovieLens 100k directory (u.data)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:SETTING=VALUE,...",
        help="a setting to compare",
    )
    parser.add_argument("--splits", nargs="+", default=list(splits), help="OUTER:INNER seed pairs")
    parser.add_argument(
        "--inner-share",
        type=share_of_train,
        default=INNER_SHARE,
        help="share of the test protocol's train the inner train keeps (0.75, as the test protocol's own "
        "split; 0.9 fits the sources on 67.5%% of the data, nearer the 75%% they see at test)",
    )


def share_of_train(text: str) -> float:
    try:
        share = float(text)
    except ValueError:
        share = float("nan")
    if not 0 < share < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a share between 0 and 1, e.g. 0.9")
    return share


def parse_split(text: str) -> tuple[int, int]:
    outer, sep, inner = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(outer), int(inner)
    except ValueError:
        sys.exit(f"--splits {text!r}: expected OUTER:INNER seeds, e.g. 42:9999")


def load_ml100k(path: Path) -> Dataset:
    if not (path / "u.data").is_file():
        sys.exit(f"no {path}/u.data: run bench/accuracy_ml100k.py or `recsys data fetch movielens-100k`")
    return load(path)


def validation_split(
    data: Dataset, outer: int, inner: int, share: float = INNER_SHARE
) -> tuple[Dataset, Log, Log]:
    """(what the pipeline may know, inner train, inner holdout): the test split is never read."""
    train0, _ = stratified_split(data.log, 0.75, filter_by="item", seed=outer)
    train, holdout = stratified_split(train0, share, filter_by="item", seed=inner)
    return data.known_from(train), train, holdout
