"""Reading the interaction log and splitting it by time.

Inputs (`load`):
- a MovieLens latest directory (ratings.csv, and optionally movies.csv and tags.csv);
- a MovieLens 100k directory (u.data, and optionally u.item/u.user or RecBole's ml-100k.item/ml-100k.user);
- a RecBole atomic file `NAME.inter` (or a directory holding one, with NAME.item / NAME.user beside it);
- one CSV file with a header naming the columns user,item[,rating],timestamp;
- one Parquet file with those columns (needs pyarrow: `pip install recsys[eval]`).
A bad row stops loading with an error that names the file and the line.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from services.common.artifacts import sha256_file
from services.common.content_space import normalise_tag

# MovieLens latest-small, shipped in the repository for the demo and the tests.
BUNDLED_DATA = Path(__file__).resolve().parents[2] / "data" / "ml-latest-small"

USER_COLUMNS = ("user", "userid", "user_id")
ITEM_COLUMNS = ("item", "itemid", "item_id", "movieid", "movie_id")
RATING_COLUMNS = ("rating", "value", "score")
TIME_COLUMNS = ("timestamp", "ts", "time")
TAG_COLUMNS = ("tag",)
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
    # Each row's position in the input file (0-based), when known: seeded splits that must reproduce
    # a reference implementation (random numbers drawn in file order) need it.
    positions: npt.NDArray[np.int64] | None = None

    @classmethod
    def empty(cls) -> Log:
        return cls(np.empty(0, dtype=str), np.empty(0, dtype=str), np.empty(0, np.float32), np.empty(0))

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def take(self, mask: npt.NDArray[np.bool_] | npt.NDArray[np.int64]) -> Log:
        positions = None if self.positions is None else self.positions[mask]
        return Log(self.users[mask], self.items[mask], self.ratings[mask], self.timestamps[mask], positions)

    def file_order(self) -> npt.NDArray[np.int64]:
        """Row indices of this log in input-file order (time order when positions are unknown)."""
        if self.positions is None:
            return np.arange(len(self), dtype=np.int64)
        return np.argsort(self.positions, kind="stable").astype(np.int64)


@dataclass(frozen=True)
class Item:
    title: str = ""
    genres: tuple[str, ...] = ()
    release_year: float = float("nan")  # when the metadata gives it apart from the title

    @property
    def year(self) -> float:
        if np.isfinite(self.release_year):
            return self.release_year
        match = YEAR.search(self.title)
        return float(match.group(1)) if match else float("nan")


@dataclass(frozen=True)
class Tags:
    """Free-text tags users gave items (MovieLens tags.csv), in file order."""

    users: npt.NDArray[np.str_]
    items: npt.NDArray[np.str_]
    texts: npt.NDArray[np.str_]  # normalise_tag: "Pixar" and "pixar " are one tag
    timestamps: npt.NDArray[np.float64]

    @classmethod
    def empty(cls) -> Tags:
        none = np.empty(0, dtype=str)
        return cls(none, none, none, np.empty(0, dtype=np.float64))

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def take(self, mask: npt.NDArray[np.bool_]) -> Tags:
        return Tags(self.users[mask], self.items[mask], self.texts[mask], self.timestamps[mask])

    def known_to(self, fit_log: Log, rated: frozenset[tuple[str, str]]) -> Tags:
        """The tags a model fitted on `fit_log` may know: those made no later than its last interaction,
        on its own interactions or on pairs nobody rated (item metadata). `rated` holds every rated
        (user, item) of the dataset, held-out ones included: a tag on a held-out interaction would
        reveal that interaction."""
        if not len(self) or not len(fit_log):
            return self.take(np.zeros(len(self), dtype=bool))
        fitted = set(zip(fit_log.users.tolist(), fit_log.items.tolist(), strict=True))
        pairs = zip(self.users.tolist(), self.items.tolist(), strict=True)
        keep = np.fromiter((p in fitted or p not in rated for p in pairs), dtype=bool, count=len(self))
        keep &= self.timestamps <= fit_log.timestamps.max()
        return self.take(keep)


@dataclass(frozen=True)
class Dataset:
    source: str  # the input's file or directory name, never a machine path
    fingerprint: str  # sha256 over the input files
    files: dict[str, str]  # input file name -> sha256
    log: Log
    catalog: dict[str, Item]  # every known item (metadata file first, then items only in the log)
    # Optional user attributes (MovieLens 100k: age, gender, occupation), as text.
    user_attributes: dict[str, dict[str, str]] = field(default_factory=dict)
    tags: Tags = field(default_factory=Tags.empty)
    # Impressions of an item the user neither clicked nor rated (the platform's own events, time order):
    # the ranker's `item_log_skipped`.
    shown: Log = field(default_factory=Log.empty)

    def known_from(self, log: Log) -> Dataset:
        """The dataset as a model fitted on `log` (a split of it) may see it: the log, and the catalogue
        limited to the items of `log`. An item only held out must stay unknown: under a random split,
        an item in the catalogue with no training interaction is an item of the held-out part."""
        items = set(log.items.tolist())
        catalog = {item: meta for item, meta in self.catalog.items() if item in items}
        return dataclasses.replace(self, log=log, catalog=catalog)

    def rated_pairs(self) -> frozenset[tuple[str, str]]:
        """Every (user, item) of the log: what `Tags.known_to` needs to leave out tags on held-out pairs."""
        return frozenset(zip(self.log.users.tolist(), self.log.items.tolist(), strict=True))


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
    return _log(users, items, ratings, stamps)


def _log(users: list[str], items: list[str], ratings: list[float], stamps: list[float]) -> Log:
    """Rows in file order -> a Log sorted by time (ties keep file order) that remembers file positions."""
    ts = np.asarray(stamps, dtype=np.float64)
    order = np.argsort(ts, kind="stable")
    return Log(
        np.asarray(users, dtype=str)[order],
        np.asarray(items, dtype=str)[order],
        np.asarray(ratings, dtype=np.float32)[order],
        ts[order],
        order.astype(np.int64),
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


def read_tags(path: Path) -> Tags:
    rows = _rows(path)
    first = next(rows, None)
    if first is None:
        return Tags.empty()
    line, header = first
    columns = [_column(header, names) for names in (USER_COLUMNS, ITEM_COLUMNS, TAG_COLUMNS, TIME_COLUMNS)]
    if any(c is None for c in columns):
        raise DataError(f"{path.name} line {line}: expected a header with userId, movieId, tag and timestamp")
    user_col, item_col, tag_col, time_col = (c for c in columns if c is not None)
    users: list[str] = []
    items: list[str] = []
    texts: list[str] = []
    stamps: list[float] = []
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(f"{path.name} line {line}: expected {len(header)} columns, got {len(row)}")
        text = normalise_tag(row[tag_col])
        if not text:
            raise DataError(f"{path.name} line {line}: empty tag")
        users.append(row[user_col].strip())
        items.append(row[item_col].strip())
        texts.append(text)
        stamps.append(_timestamp(row[time_col], f"{path.name} line {line}"))
    return Tags(
        np.asarray(users, dtype=str),
        np.asarray(items, dtype=str),
        np.asarray(texts, dtype=str),
        np.asarray(stamps, dtype=np.float64),
    )


def _text_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(line number, line without its newline) for every non-blank line."""
    try:
        with path.open(encoding=encoding, newline="") as f:
            for number, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield number, line
    except UnicodeDecodeError as e:
        raise DataError(f"{path.name}: not {encoding} text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise DataError(f"{path.name}: cannot read ({e.strerror})") from e


def read_udata(path: Path) -> Log:
    """MovieLens 100k `u.data`: user, item, rating, timestamp separated by tabs, no header."""
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[float] = []
    for line, text in _text_lines(path):
        where = f"{path.name} line {line}"
        row = text.split("\t")
        if len(row) != 4:
            raise DataError(
                f"{where}: expected 4 tab-separated fields user,item,rating,timestamp, got {len(row)}"
            )
        user, item = row[0].strip(), row[1].strip()
        if not user or not item:
            raise DataError(f"{where}: empty {'user' if not user else 'item'} id")
        users.append(user)
        items.append(item)
        ratings.append(_number(row[2], "rating", where))
        stamps.append(_number(row[3], "timestamp", where))
    if not users:
        raise DataError(f"{path.name}: no interactions")
    return _log(users, items, ratings, stamps)


def _atomic_header(path: Path) -> tuple[int, list[str], Iterator[tuple[int, str]]]:
    """RecBole atomic file: tab-separated, header fields `name:type`; returns names without types."""
    lines = _text_lines(path)
    first = next(lines, None)
    if first is None:
        raise DataError(f"{path.name}: the file is empty")
    line, header = first
    names = [field.split(":", 1)[0].strip().lower() for field in header.split("\t")]
    return line, names, lines


def read_inter(path: Path) -> Log:
    """RecBole `.inter`: header `user_id:token  item_id:token  rating:float  timestamp:float`."""
    line, names, lines = _atomic_header(path)
    user_col, item_col = _column(names, USER_COLUMNS), _column(names, ITEM_COLUMNS)
    rating_col, time_col = _column(names, RATING_COLUMNS), _column(names, TIME_COLUMNS)
    if user_col is None or item_col is None:
        raise DataError(
            f"{path.name} line {line}: expected a RecBole header with user_id:token and item_id:token, "
            f"got {' '.join(names)!r}"
        )
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[float] = []
    for line, text in lines:
        where = f"{path.name} line {line}"
        row = text.split("\t")
        if len(row) != len(names):
            raise DataError(f"{where}: expected {len(names)} tab-separated fields, got {len(row)}")
        user, item = row[user_col].strip(), row[item_col].strip()
        if not user or not item:
            raise DataError(f"{where}: empty {'user' if not user else 'item'} id")
        users.append(user)
        items.append(item)
        ratings.append(1.0 if rating_col is None else _number(row[rating_col], "rating", where))
        stamps.append(float(len(stamps)) if time_col is None else _number(row[time_col], "timestamp", where))
    if not users:
        raise DataError(f"{path.name}: no interactions after the header")
    return _log(users, items, ratings, stamps)


def read_recbole_items(path: Path) -> dict[str, Item]:
    """RecBole `.item`: item_id, movie_title, release_year, class (space-separated genres)."""
    line, names, lines = _atomic_header(path)
    item_col = _column(names, ITEM_COLUMNS)
    if item_col is None:
        raise DataError(f"{path.name} line {line}: expected a header with item_id:token")
    title_col = _column(names, ("movie_title", "title"))
    year_col = _column(names, ("release_year", "year"))
    genre_col = _column(names, ("class", "genre", "genres"))
    catalog: dict[str, Item] = {}
    for line, text in lines:
        row = text.split("\t")
        if len(row) != len(names):
            raise DataError(
                f"{path.name} line {line}: expected {len(names)} tab-separated fields, got {len(row)}"
            )
        year = float("nan")
        raw_year = row[year_col].strip() if year_col is not None else ""
        if raw_year.isdigit():  # metadata: an unknown year ("unkonwn" in ml-100k.item) stays NaN
            year = float(raw_year)
        genres = row[genre_col].split() if genre_col is not None else []
        catalog[row[item_col].strip()] = Item(
            title=row[title_col].strip() if title_col is not None else "",
            genres=tuple(g.replace("'s", "") for g in genres),  # "Children's" -> "Children"
            release_year=year,
        )
    return catalog


def read_recbole_users(path: Path) -> dict[str, dict[str, str]]:
    """RecBole `.user`: user_id plus any attributes (ml-100k: age, gender, occupation, zip_code)."""
    line, names, lines = _atomic_header(path)
    user_col = _column(names, USER_COLUMNS)
    if user_col is None:
        raise DataError(f"{path.name} line {line}: expected a header with user_id:token")
    users: dict[str, dict[str, str]] = {}
    for line, text in lines:
        row = text.split("\t")
        if len(row) != len(names):
            raise DataError(
                f"{path.name} line {line}: expected {len(names)} tab-separated fields, got {len(row)}"
            )
        users[row[user_col].strip()] = {
            n: v.strip() for n, v in zip(names, row, strict=True) if n != names[user_col]
        }
    return users


ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


def read_uitem(path: Path) -> dict[str, Item]:
    """GroupLens `u.item`: id|title|release date|video date|url|19 genre flags (latin-1)."""
    catalog: dict[str, Item] = {}
    for line, text in _text_lines(path, encoding="latin-1"):
        row = text.split("|")
        if len(row) != 5 + len(ML100K_GENRES):
            raise DataError(
                f"{path.name} line {line}: expected {5 + len(ML100K_GENRES)} |-separated fields, got {len(row)}"
            )
        flags = row[5:]
        genres = tuple(g for g, flag in zip(ML100K_GENRES, flags, strict=True) if flag.strip() == "1")
        date = row[2].strip()
        year = float(date[-4:]) if len(date) >= 4 and date[-4:].isdigit() else float("nan")
        catalog[row[0].strip()] = Item(title=row[1].strip(), genres=genres, release_year=year)
    return catalog


def read_uuser(path: Path) -> dict[str, dict[str, str]]:
    """GroupLens `u.user`: id|age|gender|occupation|zip."""
    users: dict[str, dict[str, str]] = {}
    for line, text in _text_lines(path, encoding="latin-1"):
        row = text.split("|")
        if len(row) != 5:
            raise DataError(f"{path.name} line {line}: expected 5 |-separated fields, got {len(row)}")
        users[row[0].strip()] = {"age": row[1], "gender": row[2], "occupation": row[3], "zip_code": row[4]}
    return users


def read_parquet(path: Path) -> Log:
    """A Parquet table with user, item, [rating,] timestamp columns (same names as the CSV header)."""
    try:
        import pyarrow.parquet as pq  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        raise DataError(f"{path.name}: reading Parquet needs pyarrow (pip install 'recsys[eval]')") from None
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise DataError(f"{path.name}: not a readable Parquet file ({e})") from e
    names = [n.lower() for n in table.column_names]
    user_col, item_col = _column(names, USER_COLUMNS), _column(names, ITEM_COLUMNS)
    rating_col, time_col = _column(names, RATING_COLUMNS), _column(names, TIME_COLUMNS)
    if user_col is None or item_col is None or time_col is None:
        raise DataError(
            f"{path.name}: expected columns user,item[,rating],timestamp, got {','.join(names)!r}"
        )
    columns = [table.column(i).to_pylist() for i in range(len(names))]
    n = table.num_rows
    users = [str(v) for v in columns[user_col]]
    items = [str(v) for v in columns[item_col]]
    for i in range(n):
        if columns[user_col][i] is None or columns[item_col][i] is None:
            raise DataError(f"{path.name} row {i + 1}: empty user or item id")
    ratings: list[float] = []
    stamps: list[float] = []
    for i in range(n):
        where = f"{path.name} row {i + 1}"
        raw_t = columns[time_col][i]
        stamps.append(raw_t.timestamp() if isinstance(raw_t, datetime) else _timestamp(str(raw_t), where))
        ratings.append(1.0 if rating_col is None else _number(str(columns[rating_col][i]), "rating", where))
    if not users:
        raise DataError(f"{path.name}: no rows")
    return _log(users, items, ratings, stamps)


def _fingerprint(inputs: list[Path]) -> tuple[dict[str, str], str]:
    files = {p.name: sha256_file(p) for p in inputs}
    fingerprint = hashlib.sha256(
        "".join(f"{name}:{digest}\n" for name, digest in sorted(files.items())).encode()
    ).hexdigest()
    return files, fingerprint


def _with_log_items(catalog: dict[str, Item], log: Log) -> dict[str, Item]:
    for item in sorted(set(np.unique(log.items).tolist()) - catalog.keys()):
        catalog[item] = Item()
    return catalog


def _load_ml100k(path: Path) -> Dataset:
    """A MovieLens 100k directory: u.data, with u.item/u.user or RecBole's ml-100k.item/ml-100k.user."""
    ratings = path / "u.data"
    meta = [
        p
        for p in (path / "u.item", path / "u.user", path / "ml-100k.item", path / "ml-100k.user")
        if p.is_file()
    ]
    files, fingerprint = _fingerprint([ratings, *meta])
    log = read_udata(ratings)
    catalog: dict[str, Item] = {}
    users: dict[str, dict[str, str]] = {}
    if (path / "u.item").is_file():
        catalog = read_uitem(path / "u.item")
    elif (path / "ml-100k.item").is_file():
        catalog = read_recbole_items(path / "ml-100k.item")
    if (path / "u.user").is_file():
        users = read_uuser(path / "u.user")
    elif (path / "ml-100k.user").is_file():
        users = read_recbole_users(path / "ml-100k.user")
    return Dataset(path.name, fingerprint, files, log, _with_log_items(catalog, log), users)


def _load_inter(inter: Path) -> Dataset:
    stem = inter.with_suffix("")
    meta = [p for p in (stem.with_suffix(".item"), stem.with_suffix(".user")) if p.is_file()]
    files, fingerprint = _fingerprint([inter, *meta])
    log = read_inter(inter)
    catalog = read_recbole_items(meta[0]) if meta and meta[0].suffix == ".item" else {}
    user_file = stem.with_suffix(".user")
    users = read_recbole_users(user_file) if user_file.is_file() else {}
    return Dataset(inter.name, fingerprint, files, log, _with_log_items(catalog, log), users)


def load(path: Path) -> Dataset:
    """Load any supported input (see the module docstring): a directory or a single file."""
    if path.is_dir():
        if (path / "u.data").is_file():
            return _load_ml100k(path)
        inters = sorted(path.glob("*.inter"))
        if not (path / "ratings.csv").is_file() and inters:
            return _load_inter(inters[0])
        ratings = path / "ratings.csv"
        if not ratings.is_file():
            raise DataError(f"{path.name}: directory has no ratings.csv, u.data or *.inter")
        inputs = [p for p in (ratings, path / "movies.csv", path / "tags.csv") if p.is_file()]
    elif path.is_file():
        if path.suffix == ".inter":
            return _load_inter(path)
        if path.name == "u.data" or path.suffix == ".data":
            files, fingerprint = _fingerprint([path])
            log = read_udata(path)
            return Dataset(path.name, fingerprint, files, log, _with_log_items({}, log))
        if path.suffix in (".parquet", ".pq"):
            files, fingerprint = _fingerprint([path])
            log = read_parquet(path)
            return Dataset(path.name, fingerprint, files, log, _with_log_items({}, log))
        ratings = path
        inputs = [path]
    else:
        raise DataError(f"{path}: no such file or directory")
    files, fingerprint = _fingerprint(inputs)
    log = read_interactions(ratings)
    catalog = read_movies(path / "movies.csv") if path.is_dir() and (path / "movies.csv").is_file() else {}
    tags = read_tags(path / "tags.csv") if path.is_dir() and (path / "tags.csv").is_file() else Tags.empty()
    return Dataset(path.name, fingerprint, files, log, _with_log_items(catalog, log), {}, tags)


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
