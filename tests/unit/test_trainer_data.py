from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from services.trainer.data import DataError, load, read_interactions, time_split


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_loads_a_csv_with_ratings_sorted_by_time(tmp_path: Path) -> None:
    csv = write(tmp_path / "log.csv", "user,item,rating,timestamp\nu1,i1,4.5,30\nu2,i1,3,10\nu1,i2,5,20\n")
    log = read_interactions(csv)
    assert log.users.tolist() == ["u2", "u1", "u1"]
    assert log.items.tolist() == ["i1", "i2", "i1"]
    assert log.ratings.tolist() == [3.0, 5.0, 4.5]
    assert log.timestamps.tolist() == [10.0, 20.0, 30.0]


def test_rating_column_is_optional(tmp_path: Path) -> None:
    data = load(write(tmp_path / "events.csv", "user,item,timestamp\na,x,2024-01-02T00:00:00+00:00\nb,y,5\n"))
    assert data.source == "events.csv"
    assert data.log.ratings.tolist() == [1.0, 1.0]
    assert data.log.users.tolist() == ["b", "a"]  # ISO dates and epoch seconds both accepted
    assert set(data.catalog) == {"x", "y"}
    assert len(data.fingerprint) == 64


def test_movielens_directory_with_metadata(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,100\n2,20,2.5,200\n")
    write(
        tmp_path / "movies.csv",
        'movieId,title,genres\n10,"Heat, The (1995)",Action|Crime\n30,Up (2009),Animation\n',
    )
    data = load(tmp_path)
    assert list(data.catalog) == ["10", "30", "20"]  # metadata order, then items only in the log
    assert data.catalog["10"].genres == ("Action", "Crime")
    assert data.catalog["10"].year == 1995.0
    assert np.isnan(data.catalog["20"].year)
    assert set(data.files) == {"ratings.csv", "movies.csv"}


def test_movielens_tags_are_read_with_their_user_and_normalised_text(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,100\n")
    write(tmp_path / "tags.csv", 'userId,movieId,tag,timestamp\n1,10, Pixar ,150\n7,30,"dark, funny",90\n')
    tags = load(tmp_path).tags
    assert tags.users.tolist() == ["1", "7"]
    assert tags.items.tolist() == ["10", "30"]
    assert tags.texts.tolist() == ["pixar", "dark, funny"]
    assert tags.timestamps.tolist() == [150.0, 90.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "userId,movieId,timestamp\n1,10,150\n",
            "tags.csv line 1: expected a header with userId, movieId, tag",
        ),
        ("userId,movieId,tag,timestamp\n1,10,pixar,150\n1,11,\n", "tags.csv line 3: expected 4 columns"),
        ("userId,movieId,tag,timestamp\n1,10,pixar,150\n1,11,,150\n", "tags.csv line 3: empty tag"),
        ("userId,movieId,tag,timestamp\n1,10,pixar,soon\n", "tags.csv line 2: timestamp 'soon'"),
    ],
)
def test_malformed_tags_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,100\n")
    write(tmp_path / "tags.csv", text)
    with pytest.raises(DataError, match=message):
        load(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "user,item,rating,timestamp\nu1,i1,4,1\nu1,i2,abc,2\n",
            "log.csv line 3: rating 'abc' is not a number",
        ),
        ("user,item,rating,timestamp\nu1,i1,4,1\n\nu1,i2,4\n", "log.csv line 4: expected 4 columns, got 3"),
        ("user,item,rating,timestamp\nu1,i1,4,yesterday\n", "log.csv line 2: timestamp 'yesterday'"),
        ("user,item,rating,timestamp\n,i1,4,1\n", "log.csv line 2: empty user id"),
        ("u1,i1,4,964982703\nu1,i2,4,964982704\n", "log.csv line 1: expected a header"),
        ("user,item,rating,timestamp\n", "no interactions"),
        ("", "the file is empty"),
    ],
)
def test_malformed_input_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        load(write(tmp_path / "log.csv", text))


def test_missing_input(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load(tmp_path / "absent.csv")
    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match=r"no ratings\.csv"):
        load(tmp_path / "dir")


def test_time_split_puts_nothing_in_test_before_train(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [
        f"u{rng.integers(20)},i{rng.integers(50)},{rng.integers(1, 6)},{rng.integers(0, 40)}"
        for _ in range(300)
    ]
    path = write(tmp_path / "log.csv", "user,item,rating,timestamp\n" + "\n".join(rows) + "\n")
    log = read_interactions(path)
    train, test, boundary = time_split(log, 0.2)
    assert len(train) + len(test) == len(log)
    assert train.timestamps.max() < test.timestamps.min() == boundary  # ties at the boundary go to test
    assert 0.1 < len(test) / len(log) < 0.4
    again_train, again_test, _ = time_split(read_interactions(path), 0.2)
    assert again_train.users.tolist() == train.users.tolist()
    assert again_test.items.tolist() == test.items.tolist()


def test_time_split_refuses_a_log_without_time_spread(tmp_path: Path) -> None:
    log = read_interactions(write(tmp_path / "log.csv", "user,item,timestamp\na,x,5\nb,y,5\nc,z,5\n"))
    with pytest.raises(DataError, match="cannot split"):
        time_split(log, 0.2)


def test_loads_u_data_with_recbole_metadata(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t10\t4\t300\n2\t10\t3\t100\n1\t20\t5\t200\n")
    (tmp_path / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Children's Comedy\n20\tOdd\tunkonwn\tDrama\n"
    )
    (tmp_path / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n1\t24\tM\ttechnician\t85711\n"
    )
    data = load(tmp_path)
    assert data.log.users.tolist() == ["2", "1", "1"]  # sorted by time
    assert data.log.positions is not None and data.log.positions.tolist() == [1, 2, 0]  # file rows
    assert data.catalog["10"].genres == ("Animation", "Children", "Comedy")
    assert data.catalog["10"].year == 1995.0 and np.isnan(data.catalog["20"].year)
    assert data.user_attributes["1"]["occupation"] == "technician"


def test_loads_grouplens_u_item_and_u_user(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t10\t4\t300\n")
    flags = ["0"] * 19
    flags[1] = "1"  # Action
    (tmp_path / "u.item").write_text("10|Heat (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n")
    (tmp_path / "u.user").write_text("1|24|F|writer|12345\n")
    data = load(tmp_path)
    assert data.catalog["10"].genres == ("Action",)
    assert data.user_attributes["1"]["gender"] == "F"


def test_loads_a_recbole_inter_file(tmp_path: Path) -> None:
    inter = tmp_path / "toy.inter"
    inter.write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t5\t3\t20\n2\t6\t4\t10\n"
    )
    data = load(inter)
    assert data.log.items.tolist() == ["6", "5"]
    assert load(tmp_path).log.items.tolist() == ["6", "5"]  # a directory holding one .inter


def test_loads_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "log.parquet"
    pq.write_table(
        pa.table({"user": [1, 2], "item": ["a", "b"], "rating": [4.0, 2.0], "timestamp": [5, 1]}), path
    )
    data = load(path)
    assert data.log.users.tolist() == ["2", "1"]
    assert data.log.ratings.tolist() == [2.0, 4.0]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("u.data", "1\t10\t4\t300\n1\t10\t4\n", "u.data line 2: expected 4 tab-separated fields"),
        ("u.data", "1\t10\t4\t300\n\n1\t10\tfive\t3\n", "u.data line 3: rating 'five' is not a number"),
        ("u.data", "1\t\t4\t300\n", "u.data line 1: empty item id"),
        (
            "x.inter",
            "user_id:token\titem_id:token\n1\t2\n3\n",
            "x.inter line 3: expected 2 tab-separated fields",
        ),
        ("x.inter", "foo:token\tbar:token\n1\t2\n", "x.inter line 1: expected a RecBole header"),
    ],
)
def test_malformed_new_formats_name_the_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=re.escape(message)):
        load(path)


def test_fetch_movielens_100k_checks_sha256_on_a_file_url(tmp_path: Path) -> None:
    import hashlib
    import zipfile

    from services.trainer.evaluate_cli import fetch_movielens_100k

    content = b"1\t10\t4\t300\n2\t10\t3\t100\n"
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ml-100k/u.data", content)
        z.writestr("ml-100k/u.user", "1|24|F|writer|12345\n")
        z.writestr("ml-100k/README", "fixture")
    dest = tmp_path / "cache"
    with pytest.raises(DataError, match="does not match"):
        fetch_movielens_100k(archive.as_uri(), dest, "0" * 64)
    assert not dest.exists()  # nothing written on a bad checksum
    path = fetch_movielens_100k(archive.as_uri(), dest, hashlib.sha256(content).hexdigest())
    assert path.read_bytes() == content
    assert sorted(p.name for p in dest.iterdir()) == ["u.data", "u.user"]
    assert len(load(dest).log) == 2
    with pytest.raises(DataError, match="cannot download"):
        fetch_movielens_100k((tmp_path / "missing.zip").as_uri(), dest)
