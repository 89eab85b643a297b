"""The live catalogue over the wire (real processes, the embedded store and a real Redis): upserted items
served before any retrain, hidden items absent from every path, filters, SimilarItems, bad input."""

from __future__ import annotations

import csv
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from recsys.v1 import common_pb2
from services.client import Client, item_filter
from services.common.artifacts import open_current
from services.local import LocalPlatform
from tests.support import RELAXED_BUDGETS, wait_until_healthy


@pytest.fixture(scope="module", params=["embedded", "redis"])
def live(
    request: pytest.FixtureRequest, artifacts_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalPlatform]:
    """A platform of its own: hiding items would change what the session's platform serves."""
    work = tmp_path_factory.mktemp(f"catalogue-{request.param}")
    options: dict[str, object] = {"event_log": work / "var" / "events.jsonl"}
    extra = {"gateway": RELAXED_BUDGETS}
    if request.param == "redis":
        options = {"redis_url": request.getfixturevalue("redis_url")}
        extra["features"] = ["--redis-prefix", f"catalogue-{uuid.uuid4().hex[:8]}"]
    with LocalPlatform.on_free_ports(artifacts_root, work / "logs", extra_args=extra, **options) as running:
        yield running


@pytest.fixture()
def client(live: LocalPlatform) -> Iterator[Client]:
    with Client(live.address("gateway"), timeout_s=10.0) as c:
        yield c


def genres(artifacts_root: Path) -> dict[str, set[str]]:
    path = open_current(artifacts_root).file("items.csv")
    with path.open(newline="", encoding="utf-8") as f:
        return {row["item_id"]: set(filter(None, row["genres"].split("|"))) for row in csv.DictReader(f)}


def a_user_and_their_genre(artifacts_root: Path) -> tuple[str, str, str]:
    """A user with history, the genre they watch most, and one they watch least."""
    history = json.loads(open_current(artifacts_root).file("user_history.json").read_text())
    of = genres(artifacts_root)
    user = sorted(history, key=lambda u: -len(history[u]))[3]
    counts = Counter(g for item in history[user] for g in of.get(item, ()))
    ranked = [g for g, _ in counts.most_common() if g != "(no genres listed)"]
    return user, ranked[0], ranked[-1]


def ids(response: object) -> list[str]:
    return [i.item_id for i in response.items]  # type: ignore[attr-defined]


def test_an_upserted_item_is_recommended_to_a_matching_user_before_any_retrain(
    client: Client, artifacts_root: Path
) -> None:
    user, liked, unliked = a_user_and_their_genre(artifacts_root)
    before = client.recommend(user, k=10)
    reply = client.upsert_items(
        [
            common_pb2.CatalogueItem(item_id="new-liked", title="New", categories=[liked]),
            common_pb2.CatalogueItem(item_id="new-unliked", title="Other", categories=[unliked]),
        ]
    )
    assert reply.upserted == 2 and reply.catalogue_version > 0
    after = client.recommend(user, k=10)
    assert "new-liked" in ids(after) and "new-unliked" not in ids(after)
    assert "new-liked" not in ids(before)
    # one exploration slot (10% of k) at the end; the ranked items before it are the ranker's own
    assert ids(after)[-1] == "new-liked" and after.items[-1].source == "fresh"
    assert ids(after)[:9] == ids(before)[:9]
    scores = [i.score for i in after.items]
    assert scores == sorted(scores, reverse=True)


def test_an_upserted_items_tags_place_it_before_any_retrain(client: Client, artifacts_root: Path) -> None:
    """Two new items of the same category, one tagged with the tag the user's history carries most (in
    the version's content space: content.vectors.npy, content_space.json), one with a tag none of it
    carries: the tags alone order them (a publish-time filter leaves only these two to serve)."""
    version = open_current(artifacts_root)
    user, _, unliked = a_user_and_their_genre(artifacts_root)
    space = json.loads(version.file("content_space.json").read_text())
    row = {item: r for r, item in enumerate(json.loads(version.file("item_ids.json").read_text()))}
    history = json.loads(version.file("user_history.json").read_text())[user]
    vectors = np.load(version.file("content.vectors.npy"))
    profile = vectors[[row[i] for i in history]].sum(axis=0)[max(1, len(space["genres"])) :]
    assert profile.max() > 0 and profile.min() == 0, "the user's history carries tags, not all of them"
    carried, absent = space["tags"][int(profile.argmax())], space["tags"][int(profile.argmin())]
    future = 3_000_000_000_000  # 2065: no other item is published after 2060
    new = [
        common_pb2.CatalogueItem(
            item_id="absent-tag", categories=[unliked], tags=[absent], published_at_ms=future
        ),
        common_pb2.CatalogueItem(
            item_id="carried-tag", categories=[unliked], tags=[carried.title()], published_at_ms=future
        ),
    ]
    client.upsert_items(new)
    try:
        got = client.recommend(user, k=10, item_filter=item_filter(published_after_ms=future - 1))
        assert ids(got) == ["carried-tag", "absent-tag"]
        assert got.items[0].score > got.items[1].score
    finally:
        client.hide_items([i.item_id for i in new])  # later tests filter on publish time too


def test_a_hidden_item_is_absent_from_every_path(
    live: LocalPlatform, client: Client, artifacts_root: Path
) -> None:
    user, _, _ = a_user_and_their_genre(artifacts_root)
    top = ids(client.recommend(user, k=10))[0]
    popular = ids(client.recommend("nobody-like-this", k=10))[0]  # a cold user: popular items
    similar_to = ids(client.similar_items(top, k=10))
    assert client.hide_items([top, popular]).changed == 2
    assert top not in ids(client.recommend(user, k=10))
    assert popular not in ids(client.recommend("nobody-like-this", k=10))
    assert len(client.recommend(user, k=10).items) == 10  # the next best takes its place
    anchor = next(i for i in similar_to if i not in (top, popular))
    assert top not in ids(client.similar_items(anchor, k=50))
    with pytest.raises(grpc.RpcError) as e:
        client.similar_items(top, k=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # retrieval down: the gateway's cached popular list, filtered by its own mirror
    live.kill_replica("retrieval")
    try:
        fallback = client.recommend("nobody-like-this", k=10)
        assert fallback.degraded and fallback.items and popular not in ids(fallback)
    finally:
        live.start_replica("retrieval")
        live.wait_serving("retrieval")
    wait_until_healthy(client, user)
    assert client.hide_items([top], hide=False).changed == 1
    assert top in ids(client.similar_items(anchor, k=200)) or top in ids(client.recommend(user, k=10))


def test_filters_are_honoured_with_k_results(client: Client, artifacts_root: Path) -> None:
    user, liked, unliked = a_user_and_their_genre(artifacts_root)
    of = genres(artifacts_root)
    got = client.recommend(user, k=10, item_filter=item_filter(include_categories=[unliked]))
    assert len(got.items) == 10 and all(unliked in of[i] for i in ids(got) if i in of)
    got = client.recommend(user, k=10, item_filter=item_filter(exclude_categories=[liked]))
    assert len(got.items) == 10 and all(liked not in of.get(i, set()) for i in ids(got))
    # an impossible filter: fewer items, not an error
    assert client.recommend(user, k=10, item_filter=item_filter(include_categories=["No Such"])).items == []
    client.upsert_items(
        [
            common_pb2.CatalogueItem(
                item_id="dated",
                categories=[liked],
                published_at_ms=2_000_000_000_000,
                attributes={"lang": "fr"},
            ),
            common_pb2.CatalogueItem(item_id="undated", categories=[liked], attributes={"lang": "en"}),
        ]
    )
    fresh = client.recommend(user, k=10, item_filter=item_filter(published_after_ms=1_900_000_000_000))
    assert ids(fresh) == ["dated"]
    assert ids(client.recommend(user, k=10, item_filter=item_filter(attributes={"lang": "en"}))) == [
        "undated"
    ]
    with pytest.raises(grpc.RpcError) as e:
        client.recommend(user, k=10, item_filter=item_filter(attributes={"colour": "red"}))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "colour" in (e.value.details() or "")


def test_similar_items_rules(client: Client, artifacts_root: Path) -> None:
    of = genres(artifacts_root)
    item = sorted(of)[10]
    similar = client.similar_items(item, k=10)
    assert len(similar.items) == 10 and item not in ids(similar)
    scores = [i.score for i in similar.items]
    assert scores == sorted(scores, reverse=True)
    genre = sorted(of[item])[0]
    filtered = client.similar_items(item, k=10, item_filter=item_filter(include_categories=[genre]))
    assert filtered.items and all(genre in of[i] for i in ids(filtered) if i in of)
    client.upsert_items([common_pb2.CatalogueItem(item_id="page-item", categories=sorted(of[item]))])
    like_new = client.similar_items("page-item", k=10)
    assert len(like_new.items) == 10 and "page-item" not in ids(like_new)
    with pytest.raises(grpc.RpcError) as e:
        client.similar_items("no-such-item", k=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([], "items"),
        ([common_pb2.CatalogueItem(item_id=f"x{i}") for i in range(1001)], "items"),
        (
            [common_pb2.CatalogueItem(item_id="ok"), common_pb2.CatalogueItem(title="no id")],
            "items[1].item_id",
        ),
        (
            [common_pb2.CatalogueItem(item_id="twice"), common_pb2.CatalogueItem(item_id="twice")],
            "items[1].item_id",
        ),
        ([common_pb2.CatalogueItem(item_id="ok", categories=[""])], "items[0].categories[0]"),
    ],
)
def test_bad_catalogue_writes_are_refused_whole(
    client: Client, items: list[common_pb2.CatalogueItem], field: str
) -> None:
    version = client.hide_items(["probe"]).catalogue_version
    with pytest.raises(grpc.RpcError) as e:
        client.upsert_items(items)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (e.value.details() or "").startswith(field)
    assert client.hide_items(["probe"]).catalogue_version == version  # nothing was written


def test_bad_hide_calls_are_refused(client: Client) -> None:
    for bad in ([], ["x"] * 1001, [""]):
        with pytest.raises(grpc.RpcError) as e:
            client.hide_items(bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_catalogue_survives_a_features_restart(live: LocalPlatform, client: Client) -> None:
    client.upsert_items([common_pb2.CatalogueItem(item_id="durable", categories=["Drama"])])
    version = client.hide_items(["durable-hidden"]).catalogue_version
    live.kill_replica("features")
    live.start_replica("features")
    live.wait_serving("features")
    wait_until_healthy(client, "anyone")
    assert client.hide_items(["durable-hidden"]) == common_pb2.HideItemsResponse(
        changed=0, catalogue_version=version
    )
    assert ids(client.similar_items("durable", k=3))


def test_the_cli_verbs_over_the_wire(
    live: LocalPlatform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.cli import main

    gateway = ["--gateway", live.address("gateway")]
    path = tmp_path / "items.jsonl"
    path.write_text(
        '{"item_id": "cli-1", "categories": ["Comedy"]}\n{"item_id": "cli-2", "categories": ["Drama"]}\n'
    )
    assert main(["items", "upsert", str(path), *gateway]) == 0
    assert "upserted 2 items" in capsys.readouterr().out
    assert main(["items", "hide", "cli-2", *gateway]) == 0
    assert "hide: 1 changed" in capsys.readouterr().out
    assert main(["similar", "--item", "cli-1", "-k", "5", *gateway]) == 0
    out = capsys.readouterr().out
    assert "cli-1 " not in out and "cli-2" not in out and len(out.strip().splitlines()) == 5
    assert main(["similar", "--item", "cli-2", *gateway]) == 2  # hidden: NOT_FOUND, one line
    assert capsys.readouterr().err.startswith("recsys similar: NOT_FOUND")
