"""`recsys items upsert FILE.jsonl`: every line checked before anything is sent, one line per error."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli import main
from services.items_cli import read_items


def test_a_file_of_items_reads_into_messages(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text(
        '{"item_id": "a", "title": "A", "categories": ["Comedy"], "published_at": "2026-11-30"}\n'
        "\n"
        '{"item_id": "b", "tags": ["x"], "published_at_ms": 5, "attributes": {"lang": "en"}}\n'
    )
    a, b = read_items(path)
    assert (a.item_id, list(a.categories), a.published_at_ms) == ("a", ["Comedy"], 1795996800000)
    assert (b.item_id, list(b.tags), b.published_at_ms, dict(b.attributes)) == ("b", ["x"], 5, {"lang": "en"})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "items.jsonl:2: not JSON"),
        ('{"title": "no id"}', "items.jsonl:2: item_id must be a non-empty string"),
        ('{"item_id": "x", "colour": "red"}', "items.jsonl:2: unknown field(s) ['colour']"),
        ('{"item_id": "x", "categories": "Comedy"}', "items.jsonl:2.categories: must be a list of strings"),
        ('{"item_id": "x", "published_at": "yesterday"}', "is not an ISO date or time"),
    ],
)
def test_a_bad_line_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"item_id": "fine"}\n' + line + "\n")
    # no gateway listens there: the file is refused before any call
    assert main(["items", "upsert", str(path), "--gateway", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recsys items: ") and message in err and "\n" not in err


def test_a_bad_attribute_flag_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["similar", "--item", "1", "--attribute", "novalue", "--gateway", "127.0.0.1:1"]) == 2
    assert "--attribute 'novalue': expected NAME=VALUE" in capsys.readouterr().err
