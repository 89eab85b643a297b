"""Reading the interaction log and splitting it by time.

Inputs: a MovieLens directory (ratings.csv, and optionally movies.csv and tags.csv), or one CSV file
with a header naming the columns user,item[,rating],timestamp. A bad row stops loading with an error
that names the file and the line.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from services.common.artifacts import sha256_file

# MovieLens latest-small, shipped in the repository for the demo and the tests.
BUNDLED_DATA = Path(__file__).resolve().parents[2] / "data" / "ml-latest-small"

USER_COLUMNS = ("user", "userid", "user_id")
ITEM_COLUMNS = ("item", "itemid", "item_id", "movieid", "movie_id")
RATING_COLUMNS = ("rating", "value", "score")
TIME_COLUMNS = ("timestamp", "ts", "time")
YEAR = re.compile(r"\((\d{4})\)\s*$")


class DataError(ValueError):
    """Input that cannot be trained on; the message names the file and, for a bad row, the line."""


@dataclass(frozen=True)
class Log:
    """Interactions as parallel arrays, sorted by timestamp (ties keep file order)."""

    users: npt.NDArray[np.str_]
    items: npt.NDArray[np.str_]
    ratings: npt.NDArray[np.float32]
    timestamps: npt.NDArray[np.float64]  # seconds since the epoch

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def take(self, mask: npt.NDArray[np.bool_]) -> Log:
        return Log(self.users[mask], self.items[mask], self.ratings[mask], self.timestamps[mask])


@dataclass(frozen=True)
class Item:
    title: str = ""
    genres: tuple[str, ...] = ()

    @property
    def year(self) -> float:
        match = YEAR.search(self.title)
        return float(match.group(1)) if match else float("nan")


@dataclass(frozen=True)
class Dataset:
    source: str  # the input's file or directory name, never a machine path
    fingerprint: str  # sha256 over the input files
    files: dict[str, str]  # input file name -> sha256
    log: Log
    catalog: dict[str, Item]  # every known item (metadata file first, then items only in the log)
    tag_items: npt.NDArray[np.str_] = field(default_factory=lambda: np.empty(0, dtype=str))
    tag_timestamps: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0, dtype=np.float64))


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for every non-blank row, header included."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            try:
                for row in reader:
                    if row and any(cell.strip() for cell in row):
                        yield reader.line_num, row
            except csv.Error as e:
                raise DataError(f"{path.name} line {reader.line_num}: {e}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path.name}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise DataError(f"{path.name}: cannot read ({e.strerror})") from e


def _number(raw: str, what: str, where: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise DataError(f"{where}: {what} {raw!r} is not a number") from None
    if not np.isfinite(value):
        raise DataError(f"{where}: {what} {raw!r} is not a finite number")
    return value


def _timestamp(raw: str, where: str) -> float:
    try:
        return _number(raw, "timestamp", where)
    except DataError:
        pass
    try:
        return datetime.fromisoformat(raw.strip()).timestamp()
    except ValueError:
        raise DataError(
            f"{where}: timestamp {raw!r} is neither a number (epoch seconds) nor an ISO 8601 date"
        ) from None


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    return None


def read_interactions(path: Path) -> Log:
    """A ratings-style CSV: header with user, item, optional rating, timestamp columns."""
    rows = _rows(path)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path.name}: the file is empty")
    line, header = first
    user_col, item_col = _column(header, USER_COLUMNS), _column(header, ITEM_COLUMNS)
    rating_col, time_col = _column(header, RATING_COLUMNS), _column(header, TIME_COLUMNS)
    if user_col is None or item_col is None or time_col is None:
        raise DataError(
            f"{path.name} line {line}: expected a header naming the columns user,item[,rating],timestamp, "
            f"got {','.join(header)!r}"
        )
    width = len(header)
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[float] = []
    for line, row in rows:
        where = f"{path.name} line {line}"
        if len(row) != width:
            raise DataError(f"{where}: expected {width} columns, got {len(row)}")
        user, item = row[user_col].strip(), row[item_col].strip()
        if not user:
            raise DataError(f"{where}: empty user id")
        if not item:
            raise DataError(f"{where}: empty item id")
        users.append(user)
        items.append(item)
        ratings.append(1.0 if rating_col is None else _number(row[rating_col], "rating", where))
        stamps.append(_timestamp(row[time_col], where))
    if not users:
        raise DataError(f"{path.name}: no interactions after the header")
    ts = np.asarray(stamps, dtype=np.float64)
    order = np.argsort(ts, kind="stable")
    return Log(
        np.asarray(users, dtype=str)[order],
        np.asarray(items, dtype=str)[order],
        np.asarray(ratings, dtype=np.float32)[order],
        ts[order],
    )


def read_movies(path: Path) -> dict[str, Item]:
    rows = _rows(path)
    first = next(rows, None)
    if first is None:
        return {}
    line, header = first
    item_col = _column(header, ITEM_COLUMNS)
    title_col, genres_col = _column(header, ("title",)), _column(header, ("genres",))
    if item_col is None:
        raise DataError(f"{path.name} line {line}: expected a header with movieId,title,genres")
    catalog: dict[str, Item] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(f"{path.name} line {line}: expected {len(header)} columns, got {len(row)}")
        item = row[item_col].strip()
        if not item:
            raise DataError(f"{path.name} line {line}: empty item id")
        genres = row[genres_col].strip() if genres_col is not None else ""
        catalog[item] = Item(
            title=row[title_col].strip() if title_col is not None else "",
            genres=tuple(g for g in genres.split("|") if g),
        )
    return catalog


def read_tags(path: Path) -> tuple[npt.NDArray[np.str_], npt.NDArray[np.float64]]:
    rows = _rows(path)
    first = next(rows, None)
    if first is None:
        return np.empty(0, dtype=str), np.empty(0, dtype=np.float64)
    line, header = first
    item_col, time_col = _column(header, ITEM_COLUMNS), _column(header, TIME_COLUMNS)
    if item_col is None or time_col is None:
        raise DataError(f"{path.name} line {line}: expected a header with movieId and timestamp")
    items: list[str] = []
    stamps: list[float] = []
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(f"{path.name} line {line}: expected {len(header)} columns, got {len(row)}")
        items.append(row[item_col].strip())
        stamps.append(_timestamp(row[time_col], f"{path.name} line {line}"))
    return np.asarray(items, dtype=str), np.asarray(stamps, dtype=np.float64)


def load(path: Path) -> Dataset:
    """Load a MovieLens directory or a single interactions CSV."""
    if path.is_dir():
        ratings = path / "ratings.csv"
        if not ratings.is_file():
            raise DataError(f"{path.name}: directory has no ratings.csv")
        inputs = [p for p in (ratings, path / "movies.csv", path / "tags.csv") if p.is_file()]
    elif path.is_file():
        ratings = path
        inputs = [path]
    else:
        raise DataError(f"{path}: no such file or directory")
    files = {p.name: sha256_file(p) for p in inputs}
    fingerprint = hashlib.sha256(
        "".join(f"{name}:{digest}\n" for name, digest in sorted(files.items())).encode()
    ).hexdigest()
    log = read_interactions(ratings)
    catalog = read_movies(path / "movies.csv") if path.is_dir() and (path / "movies.csv").is_file() else {}
    for item in sorted(set(np.unique(log.items).tolist()) - catalog.keys()):
        catalog[item] = Item()
    tag_items, tag_ts = (
        read_tags(path / "tags.csv")
        if path.is_dir() and (path / "tags.csv").is_file()
        else (np.empty(0, dtype=str), np.empty(0, dtype=np.float64))
    )
    return Dataset(path.name, fingerprint, files, log, catalog, tag_items, tag_ts)


def time_split(log: Log, fraction: float) -> tuple[Log, Log, float]:
    """(earlier, later, boundary): the last `fraction` of interactions by time go to `later`.

    Every interaction at the boundary timestamp goes to `later`, so nothing in `later` is earlier than
    anything in `earlier`, and nothing shares a timestamp across the boundary.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    n = len(log)
    cut = n - max(1, round(n * fraction))
    if cut <= 0:
        raise DataError(f"cannot split {n} interactions in time: too few")
    boundary = float(log.timestamps[cut])
    later = log.timestamps >= boundary
    if later.all():
        raise DataError("cannot split in time: all interactions share the timestamp of the boundary")
    return log.take(~later), log.take(later), boundary
