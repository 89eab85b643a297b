from __future__ import annotations

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
