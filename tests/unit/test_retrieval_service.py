"""RetrievalService over a real grpc.aio server and a real stub, serving the version the session trained
(tests/conftest.py `trained`: every source of the pipeline), and copies of it broken on purpose.

What the service answers is checked against a reference computed here from the version's own files:
every source loaded on its own (services.common.sources), asked for the user's list, and the lists fused
by reciprocal rank as the artifact's manifest says (pipeline.fusion).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import itertools
import json
import math
import os
import shutil
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from services.common import candidates
from services.common import config as config_module
from services.common.artifacts import (
    ArtifactError,
    ArtifactVersion,
    ArtifactWatcher,
    open_version,
    publish,
    staging_dir,
)
from services.common.fusion import POPULAR, CandidateColumns, FusionParams
from services.common.server import Component, serve
from services.common.sources import source_class
from services.common.sources.base import HISTORY_LIMIT, History, Rows, Source, exclusion
from services.local import free_port
from services.retrieval.service import MAX_EXCLUDE, MAX_HISTORY, Config, RetrievalService, create
from tests.support import serving

if TYPE_CHECKING:  # the async stub class exists only for type checkers
    from recsys.v1.retrieval_pb2_grpc import RetrievalServiceAsyncStub as Stub

Request = retrieval_pb2.RetrieveRequest
Response = retrieval_pb2.RetrieveResponse


@dataclass(frozen=True)
class Trained:
    """The trained version as this test reads it from its files."""

    version: ArtifactVersion
    item_ids: list[str]
    row: dict[str, int]
    #: user -> items, most recent first (user_history.json)
    history: dict[str, list[str]]
    #: manifest pipeline.sources, in order, and pipeline.fusion
    sources: list[str]
    fusion: FusionParams
    #: every source of the version, loaded on its own from the version's files
    loaded: dict[str, Source]
    #: item ids by popular.counts.npy, most first (ties by row)
    popular: list[str]
    #: users with the fewest items, a median one and the one with the most
    users: tuple[str, str, str]

    def user(self, user_id: str) -> common_pb2.UserFeatures:
        """The user as the features service returns them: the recent items (newest first) and all seen."""
        items = self.history[user_id]
        return common_pb2.UserFeatures(
            user_id=user_id, known=True, recent_item_ids=items[:HISTORY_LIMIT], seen_item_ids=items
        )

    def rows(self, ids: Iterable[str]) -> Rows:
        return np.array([self.row[i] for i in ids if i in self.row], dtype=np.int64)


@pytest.fixture(scope="module")
def t(trained: ArtifactVersion) -> Trained:
    item_ids: list[str] = json.loads(trained.file("item_ids.json").read_text())
    history: dict[str, list[str]] = json.loads(trained.file("user_history.json").read_text())
    pipeline = trained.manifest["pipeline"]
    raw = pipeline["fusion"]
    fusion = FusionParams(tuple(raw["fused"]), float(raw["k"]), int(raw["depth"]), int(raw["candidates"]))
    sources = list(pipeline["sources"])
    counts = np.load(trained.file("popular.counts.npy"))
    by_size = sorted(history, key=lambda u: (len(history[u]), u))
    return Trained(
        trained,
        item_ids,
        {item: row for row, item in enumerate(item_ids)},
        history,
        sources,
        fusion,
        {s: source_class(s).load(trained, len(item_ids)) for s in sources},
        [item_ids[r] for r in np.lexsort((np.arange(counts.size), -counts))],
        (by_size[0], by_size[len(by_size) // 2], by_size[-1]),
    )


@dataclass(frozen=True)
class Expected:
    rows: Rows
    fused: npt.NDArray[np.float64]
    origin: list[str]
    #: each source that runs: its own list for the user (its best `depth`, none excluded)
    lists: dict[str, Rows]
    history: History


def expected(
    t: Trained,
    history_ids: Sequence[str],
    n: int,
    exclude: Sequence[str] = (),
    allowed: Sequence[str] = (),
) -> Expected:
    """The candidates by the definition: reciprocal-rank fusion of the fused sources' lists (ties by
    row), popular items after them when they offer fewer than n."""
    history = History.of(t.rows(history_ids))
    excluded = exclusion(t.rows(exclude), history.as_set)
    depth, k = t.fusion.depth, t.fusion.k
    lists = {
        s: t.loaded[s].scores(history).top(depth, excluded)[0]
        for s in t.sources
        if not allowed or s in allowed
    }
    fused: dict[int, float] = {}
    best: dict[int, tuple[int, str]] = {}
    for s in t.fusion.fused:
        for rank, row in enumerate(lists.get(s, np.empty(0, np.int64)).tolist()):
            fused[row] = fused.get(row, 0.0) + 1.0 / (k + rank + 1.0)
            if row not in best or rank < best[row][0]:
                best[row] = (rank, s)
    order = sorted(fused, key=lambda row: (-fused[row], row))[:n]
    scores = [fused[r] for r in order]
    origin = [best[r][1] for r in order]
    if len(order) < n and POPULAR in lists:
        taken = exclusion(excluded, np.array(order, dtype=np.int64))
        more = t.loaded[POPULAR].scores(history).top(n - len(order), taken)[0].tolist()
        order += more
        scores += [-float(i) for i in range(1, len(more) + 1)]
        origin += [POPULAR] * len(more)
    return Expected(
        np.array(order, dtype=np.int64),
        np.array(scores),
        origin,
        {s: rows[:depth] for s, rows in lists.items()},
        history,
    )


def wire(message: Response | common_pb2.Candidates) -> bytes:
    """What a response says, comparable whatever NaN its columns hold."""
    return message.SerializeToString(deterministic=True)


def decode(t: Trained, response: Response) -> CandidateColumns:
    candidates.validate(response.candidates)
    return candidates.from_proto(response.candidates, t.rows(response.candidates.item_ids))


def assert_well_formed(t: Trained, response: Response, n: int, never: Iterable[str] = ()) -> None:
    got = list(response.candidates.item_ids)
    assert len(got) == n
    assert len(set(got)) == n, "candidates must be distinct"
    assert not set(got) & set(never), "a history or excluded item came back"
    assert set(got) <= set(t.row), "a candidate outside the catalogue"
    scores = list(response.candidates.scores)
    assert all(math.isfinite(s) for s in scores)
    assert all(a >= b for a, b in itertools.pairwise(scores)), "not best first"
    candidates.validate(response.candidates)


def assert_is(t: Trained, response: Response, want: Expected) -> None:
    """The response is exactly `want`: same candidates in the same order, the same fused scores (as
    float32), origins, and one column per source that ran holding that source's view of each candidate."""
    got = decode(t, response)
    np.testing.assert_array_equal(got.rows, want.rows)
    np.testing.assert_array_equal(got.fused, want.fused.astype(np.float32))
    assert got.origin == want.origin
    assert list(got.columns) == list(want.lists), "one column per source that ran, in the version's order"
    for s, own in want.lists.items():
        column, scores = got.columns[s], t.loaded[s].scores(want.history)
        assert column.scores.dtype == np.float32 and column.ranks.dtype == np.float32
        np.testing.assert_allclose(column.scores, scores.at(want.rows), rtol=1e-5, atol=1e-6, err_msg=s)
        position = {row: i for i, row in enumerate(own.tolist())}
        ranks = [float(position.get(row, math.nan)) for row in want.rows.tolist()]
        np.testing.assert_array_equal(column.ranks, np.array(ranks, dtype=np.float32), err_msg=s)
        if own.size:
            assert column.best == pytest.approx(float(scores.at(own[:1])[0]), rel=1e-5, abs=1e-6), s
        else:
            assert math.isnan(column.best), s


def run(
    version: ArtifactVersion | None,
    scenario: Callable[[Stub, RetrievalService], Awaitable[None]],
    config: Config | None = None,
) -> None:
    """`scenario` against a fresh component (with `version` loaded as CURRENT) on a real server."""

    async def main() -> None:
        component = create(config or Config())
        if version is not None:
            await component.load(version)
        async with serving(component, retrieval_pb2_grpc.RetrievalServiceStub) as stub:
            await scenario(stub, component)

    asyncio.run(main())


async def rpc_error(stub: Stub, request: Request) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Retrieve(request)
    return caught.value


async def expect_invalid(stub: Stub, request: Request, field: str) -> None:
    error = await rpc_error(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert (error.details() or "").startswith(f"{field}:"), error.details()


# --- what a request gets ----------------------------------------------------------------------------


def test_warm_users_get_the_fused_candidates_of_every_source(t: Trained) -> None:
    async def scenario(stub: Stub, _: RetrievalService) -> None:
        for user_id in t.users:
            seen = t.history[user_id]
            # popular items the user has not seen, ids the catalogue does not know (dropped)
            unseen = [i for i in t.popular[:40] if i not in seen]
            exclude = [*unseen[:25], "no-such-item"]
            user = t.user(user_id)
            user.recent_item_ids.append("no-such-item")
            response = await stub.Retrieve(Request(user_id=user_id, user=user, exclude_item_ids=exclude))
            assert response.artifact_version == t.version.version
            assert_well_formed(t, response, t.fusion.candidates, [*seen, *exclude])
            assert set(response.candidates.source_names) <= set(t.fusion.fused)
            assert [c.source for c in response.candidates.columns] == t.sources
            assert_is(t, response, expected(t, seen, t.fusion.candidates, exclude))

    run(t.version, scenario)


def test_recent_items_alone_are_a_history_and_never_come_back(t: Trained) -> None:
    user_id = t.users[1]
    recent = t.history[user_id][:10]

    async def scenario(stub: Stub, _: RetrievalService) -> None:
        user = common_pb2.UserFeatures(recent_item_ids=recent)
        response = await stub.Retrieve(Request(user=user, n=50))
        assert_well_formed(t, response, 50, recent)
        assert POPULAR not in response.candidates.source_names
        assert_is(t, response, expected(t, recent, 50))
        # the history is the request's `user`, not whatever the version knows of user_id
        cold = await stub.Retrieve(Request(user_id=user_id, n=5))
        assert list(cold.candidates.item_ids) == t.popular[:5]

    run(t.version, scenario)


def test_n_and_min_n(t: Trained) -> None:
    user_id = t.users[1]
    user = t.user(user_id)
    seen = t.history[user_id]
    default = t.fusion.candidates

    async def count(stub: Stub, n: int, min_n: int) -> Response:
        response = await stub.Retrieve(Request(user_id=user_id, user=user, n=n, min_n=min_n))
        assert_well_formed(t, response, max(n or default, min_n), seen)
        return response

    async def scenario(stub: Stub, _: RetrievalService) -> None:
        full = await count(stub, 0, 0)  # 0: the version's own count
        for n, min_n in ((10, 0), (20, 5), (10, 30), (0, 150), (0, default - 1)):
            response = await count(stub, n, min_n)
            # within the fusion depth a longer list only adds to the end of a shorter one
            shared = min(len(response.candidates.item_ids), default)
            assert response.candidates.item_ids[:shared] == full.candidates.item_ids[:shared]
        # past the fusion depth: the candidates go on, every source's ranks stop at its depth
        depth = t.fusion.depth
        response = await count(stub, depth + 200, 0)
        for s, column in decode(t, response).columns.items():
            listed = column.ranks[~np.isnan(column.ranks)]
            assert listed.size <= depth and len(set(listed.tolist())) == listed.size, s
            assert (listed < depth).all(), s
        assert_is(t, response, expected(t, seen, depth + 200))
        # the largest n this service allows
        await count(stub, 2000, 2000)

    run(t.version, scenario)
    small = Config(max_candidates=50)

    async def limited(stub: Stub, _: RetrievalService) -> None:
        assert len((await stub.Retrieve(Request(user=user, n=50))).candidates.item_ids) == 50
        await expect_invalid(stub, Request(user=user, n=51), "n")
        await expect_invalid(stub, Request(user=user, min_n=51), "min_n")

    run(t.version, limited, small)


def test_the_largest_allowed_request(t: Trained) -> None:
    """MAX_EXCLUDE excluded ids and MAX_HISTORY history ids (most of them unknown to the catalogue)."""
    exclude = t.item_ids[::2] + [f"gone-{i}" for i in range(MAX_EXCLUDE - len(t.item_ids[::2]))]
    seen_known = t.item_ids[1::4]
    seen = seen_known + [f"old-{i}" for i in range(MAX_HISTORY - len(seen_known))]
    user = common_pb2.UserFeatures(user_id="heavy", recent_item_ids=seen[:HISTORY_LIMIT], seen_item_ids=seen)
    assert len(exclude) == MAX_EXCLUDE and len(seen) == MAX_HISTORY

    async def scenario(stub: Stub, component: RetrievalService) -> None:
        n = component.config.max_candidates
        response = await stub.Retrieve(Request(user_id="heavy", user=user, exclude_item_ids=exclude, n=n))
        assert_well_formed(t, response, n, [*exclude, *seen_known])

    run(t.version, scenario)


def test_cold_users_get_popular_items(t: Trained) -> None:
    async def scenario(stub: Stub, _: RetrievalService) -> None:
        response = await stub.Retrieve(Request(user_id="cold", n=50))
        assert_well_formed(t, response, 50)
        assert list(response.candidates.item_ids) == t.popular[:50]
        assert list(response.candidates.source_names) == [POPULAR]
        assert [c.source for c in candidates.head(response.candidates, 50)] == [POPULAR] * 50
        assert list(response.candidates.scores) == [-float(i) for i in range(1, 51)]
        got = decode(t, response)
        assert list(got.columns) == t.sources  # every source ran: only popular had anything to say
        for s, column in got.columns.items():
            if s == POPULAR:
                np.testing.assert_array_equal(column.ranks, np.arange(50, dtype=np.float32))
                assert column.best == column.scores[0] == column.scores.max()
            else:
                assert np.isnan(column.ranks).all() and math.isnan(column.best), s
        assert_is(t, response, expected(t, [], 50))
        # unknown items only: still cold; exclusions skip the popular ones
        excluded = t.popular[:10]
        user = common_pb2.UserFeatures(recent_item_ids=["nope"], seen_item_ids=["nope", "nope-2"])
        response = await stub.Retrieve(Request(user=user, exclude_item_ids=excluded, n=20))
        assert_well_formed(t, response, 20, excluded)
        assert list(response.candidates.item_ids) == t.popular[10:30]
        # with popular not allowed, a cold user gets nothing (but the columns of what ran)
        response = await stub.Retrieve(Request(user_id="cold", n=50, sources=["als", "ease"]))
        assert len(response.candidates.item_ids) == 0 and response.artifact_version == t.version.version
        assert [c.source for c in response.candidates.columns] == ["ease", "als"]

    run(t.version, scenario)


def test_popular_items_top_up_a_short_fused_list(t: Trained) -> None:
    user_id = t.users[0]  # the fewest items: ease lists far fewer than 2000
    seen = t.history[user_id]

    async def scenario(stub: Stub, _: RetrievalService) -> None:
        allowed = ["ease", POPULAR]
        response = await stub.Retrieve(Request(user=t.user(user_id), n=2000, sources=allowed))
        assert_well_formed(t, response, 2000, seen)
        origin = decode(t, response).origin
        first_popular = origin.index(POPULAR)
        assert first_popular > 0 and set(origin[:first_popular]) == {"ease"}
        assert set(origin[first_popular:]) == {POPULAR}, "popular items come after the fused ones"
        scores = list(response.candidates.scores)
        assert min(scores[:first_popular]) > 0 > max(scores[first_popular:])
        assert_is(t, response, expected(t, seen, 2000, allowed=allowed))
        # everything but 20 items excluded, n bigger than what is left: all of the rest, once each
        keep = set(t.item_ids[-20:]) - set(seen)
        rest = [i for i in t.item_ids if i not in keep]
        response = await stub.Retrieve(Request(user=t.user(user_id), exclude_item_ids=rest, n=100))
        assert set(response.candidates.item_ids) == keep and len(response.candidates.item_ids) == len(keep)

    run(t.version, scenario)


def test_sources_restrict_the_columns_and_what_is_fused(t: Trained) -> None:
    user_id = t.users[1]
    seen = t.history[user_id]

    async def scenario(stub: Stub, _: RetrievalService) -> None:
        # one fused source among the allowed: the candidates are its own list, in its order
        allowed = ["als", "recent", POPULAR]
        response = await stub.Retrieve(Request(user=t.user(user_id), n=60, sources=allowed))
        assert_well_formed(t, response, 60, seen)
        assert [c.source for c in response.candidates.columns] == ["recent", "als", POPULAR]
        assert list(response.candidates.source_names) == ["als"]
        np.testing.assert_array_equal(decode(t, response).columns["als"].ranks, np.arange(60))
        assert_is(t, response, expected(t, seen, 60, allowed=allowed))
        # two fused sources, in any order: only they fuse and only they have columns
        response = await stub.Retrieve(Request(user=t.user(user_id), n=80, sources=["cooc", "ease"]))
        assert_well_formed(t, response, 80, seen)
        assert [c.source for c in response.candidates.columns] == ["ease", "cooc"]
        assert set(response.candidates.source_names) == {"ease", "cooc"}
        assert_is(t, response, expected(t, seen, 80, allowed=["ease", "cooc"]))
        # a name the registry does not know (the old service's "ann" among them) is refused
        for bad in (["als", "bm25"], ["ann"], [""]):
            await expect_invalid(stub, Request(user=t.user(user_id), n=10, sources=bad), "sources")

    run(t.version, scenario)


def test_bad_requests_are_invalid_argument(t: Trained) -> None:
    async def scenario(stub: Stub, component: RetrievalService) -> None:
        limit = component.config.max_candidates
        for n in (-1, limit + 1):
            await expect_invalid(stub, Request(n=n), "n")
        for min_n in (-1, limit + 1):
            await expect_invalid(stub, Request(min_n=min_n), "min_n")
        await expect_invalid(stub, Request(user_id="u" * 257, n=10), "user_id")
        too_many = [str(i) for i in range(MAX_HISTORY + 1)]
        await expect_invalid(stub, Request(exclude_item_ids=too_many[: MAX_EXCLUDE + 1]), "exclude_item_ids")
        user = common_pb2.UserFeatures(seen_item_ids=too_many)
        await expect_invalid(stub, Request(user=user), "user.seen_item_ids")
        user = common_pb2.UserFeatures(recent_item_ids=too_many)
        await expect_invalid(stub, Request(user=user), "user.recent_item_ids")
        await expect_invalid(stub, Request(sources=["popular", "nope"]), "sources")
        # the limits themselves are allowed
        response = await stub.Retrieve(Request(user_id="u" * 256, exclude_item_ids=too_many[:MAX_EXCLUDE]))
        assert len(response.candidates.item_ids) == t.fusion.candidates

    run(t.version, scenario)


# --- versions ---------------------------------------------------------------------------------------

#: manifest keys `publish` writes itself
PUBLISHED = ("schema_version", "version", "created_at", "files")


def variant(
    trained: ArtifactVersion,
    root: Path,
    name: str,
    *,
    drop: Iterable[str] = (),
    write: Mapping[str, bytes] | None = None,
    pipeline: Callable[[dict[str, Any]], None] | None = None,
) -> ArtifactVersion:
    """A copy of `trained` published under `root` as `name` (and made CURRENT), without the files
    `drop`, with the files `write` holding new content, and `pipeline` applied to its manifest's
    pipeline section. Every checksum matches: only what the change breaks is broken. Unchanged files
    are hard links (never written to)."""
    staging = staging_dir(root, name)
    write = dict(write or {})
    for file in trained.manifest["files"]:
        if file in drop or file in write:
            continue
        try:
            os.link(trained.path / file, staging / file)
        except OSError:
            shutil.copy2(trained.path / file, staging / file)
    for file, data in write.items():
        (staging / file).write_bytes(data)
    manifest = copy.deepcopy({k: v for k, v in trained.manifest.items() if k not in PUBLISHED})
    if pipeline is not None:
        pipeline(manifest["pipeline"])
    return publish(root, staging, name, manifest)


def npy(array: npt.NDArray[Any]) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def test_unavailable_before_load() -> None:
    async def scenario(stub: Stub, component: RetrievalService) -> None:
        assert component.model is None
        error = await rpc_error(stub, Request(n=10))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "no artifact version loaded" in (error.details() or "")

    run(None, scenario)


def test_not_serving_until_a_version_loads_through_the_common_bootstrap(t: Trained, tmp_path: Path) -> None:
    """`serve()` with the component over an empty artifacts directory: health NOT_SERVING and Retrieve
    UNAVAILABLE; once a version is published there, SERVING and the version answers."""
    root = tmp_path / "artifacts"
    root.mkdir()

    async def main() -> None:
        config = config_module.parse(
            Config,
            ["--port", str(free_port()), "--artifacts-dir", str(root), "--reload-interval-s", "0.1"],
            env={},
        )
        stop = asyncio.Event()
        task = asyncio.create_task(serve(create(config), config, stop))
        check = health_pb2.HealthCheckRequest(service="recsys.v1.RetrievalService")

        async def status(health: health_pb2_grpc.HealthStub) -> int | None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await health.Check(check, timeout=1)
                return int(reply.status)
            return None

        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{config.port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                stub: Stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
                while (reply := await status(health)) is None:  # the server is starting
                    assert not task.done(), "the server stopped"
                    await asyncio.sleep(0.05)
                assert reply == health_pb2.HealthCheckResponse.NOT_SERVING
                error = await rpc_error(stub, Request(n=10))
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                await asyncio.to_thread(variant, t.version, root, "first")
                while await status(health) != health_pb2.HealthCheckResponse.SERVING:
                    assert not task.done(), "the server stopped"
                    await asyncio.sleep(0.05)
                response = await stub.Retrieve(Request(user=t.user(t.users[0]), n=10))
                assert len(response.candidates.item_ids) == 10 and response.artifact_version == "first"
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)

    asyncio.run(main())


def corrupt(version: ArtifactVersion, file: str) -> ArtifactVersion:
    """Overwrite one file of a published version (a new file: the hard-linked original stays intact)."""
    path = version.path / file
    path.unlink()
    path.write_bytes(b"garbage")
    return version


def sources_without(name: str) -> Callable[[dict[str, Any]], None]:
    def change(pipeline: dict[str, Any]) -> None:
        pipeline["sources"] = [s for s in pipeline["sources"] if s != name]

    return change


def test_broken_versions_are_refused_and_the_previous_one_keeps_serving(t: Trained, tmp_path: Path) -> None:
    vectors = np.load(t.version.file("als.vectors.npy"))
    broken: list[tuple[str, dict[str, Any], str]] = [
        ("unreadable-table", {"write": {"ease.table.npz": b"garbage"}}, r"cannot read ease\.table\.npz"),
        ("no-index", {"drop": ["als.index.faiss"]}, r"has no file 'als\.index\.faiss'"),
        ("unreadable-index", {"write": {"als.index.faiss": b"garbage"}}, r"cannot read als\.index\.faiss"),
        ("short-vectors", {"write": {"als.vectors.npy": npy(vectors[:-1])}}, r"als\.vectors\.npy must be"),
        ("bad-ids", {"write": {"item_ids.json": b'{"not": "a list"}'}}, r"item_ids\.json must be"),
        ("bm25", {"pipeline": lambda p: p["sources"].append("bm25")}, r"unknown source 'bm25'"),
        ("no-sources", {"pipeline": lambda p: p.update(sources=[])}, r"lists no sources"),
        ("no-fusion", {"pipeline": lambda p: p.pop("fusion")}, r"pipeline\.fusion is incomplete"),
        ("fuses-others", {"pipeline": sources_without("als")}, r"fuses \['als'\], which are not among"),
    ]
    user = t.user(t.users[2])

    async def main() -> None:
        component = create(Config())
        watcher = ArtifactWatcher(tmp_path, component.load)
        variant(t.version, tmp_path, "good")
        assert await watcher.check() and watcher.loaded == "good"
        async with serving(component, retrieval_pb2_grpc.RetrievalServiceStub) as stub:
            before = await stub.Retrieve(Request(user=user))
            assert before.artifact_version == "good"
            for name, change, reason in broken:
                variant(t.version, tmp_path, name, **change)  # checksums match: CURRENT names it
                with pytest.raises(ArtifactError, match=reason):
                    await component.load(open_version(tmp_path, name))
                assert await watcher.check() and watcher.loaded == "good", name  # refused by the watcher
                after = await stub.Retrieve(Request(user=user))
                assert wire(after) == wire(before), f"{name} changed what is served"
            # a file changed after publishing: its checksum no longer matches
            corrupt(variant(t.version, tmp_path, "tampered"), "cooc.table.npz")
            with pytest.raises(ArtifactError, match=r"cooc\.table\.npz is corrupt"):
                open_version(tmp_path, "tampered")
            assert await watcher.check() and watcher.loaded == "good"
            assert wire(await stub.Retrieve(Request(user=user))) == wire(before)
            # a good version after them is picked up and served
            variant(t.version, tmp_path, "good2")
            assert await watcher.check() and watcher.loaded == "good2"
            response = await stub.Retrieve(Request(user=user))
            assert response.artifact_version == "good2"
            assert wire(response.candidates) == wire(before.candidates)

    asyncio.run(main())


def test_pinned_versions_are_served_beside_current(t: Trained, tmp_path: Path) -> None:
    """CURRENT and the versions of <artifacts>/PINNED, each request served by the one it names."""
    variant(
        t.version,
        tmp_path,
        "slim",  # a version trained without the content source
        drop=["content.vectors.npy", "content.index.faiss"],
        pipeline=sources_without("content"),
    )
    variant(t.version, tmp_path, "main")
    user = t.user(t.users[1])

    async def main() -> None:
        component = create(Config())
        watcher = ArtifactWatcher(tmp_path, component.load, component.load_pinned, component.unpin)
        assert await watcher.check() and watcher.loaded == "main" and not watcher.pinned
        (tmp_path / "PINNED").write_text("# arms\nslim\nmain\n")
        assert await watcher.check() and watcher.loaded == "main" and watcher.pinned == {"slim", "main"}
        assert component.versions.pinned["main"] is component.model  # CURRENT itself is not loaded twice
        async with serving(component, retrieval_pb2_grpc.RetrievalServiceStub) as stub:

            async def columns(version: str, sources: Sequence[str] = ()) -> list[str]:
                request = Request(user=user, artifact_version=version, sources=sources)
                response = await stub.Retrieve(request)
                assert response.artifact_version == (version or "main")
                assert_well_formed(t, response, t.fusion.candidates, user.seen_item_ids)
                return [c.source for c in response.candidates.columns]

            assert "content" in await columns("")
            assert await columns("main") == await columns("") == t.sources
            assert await columns("slim") == [s for s in t.sources if s != "content"]
            # a registered source the version lacks is skipped
            assert await columns("slim", ["content", "als"]) == ["als"]
            assert await columns("main", ["content", "als"]) == ["als", "content"]
            error = await rpc_error(stub, Request(artifact_version="nope"))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "nope" in (error.details() or "")
            # unpinned: no longer served; CURRENT still is
            (tmp_path / "PINNED").write_text("main\n")
            assert await watcher.check() and watcher.pinned == {"main"}
            error = await rpc_error(stub, Request(artifact_version="slim"))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert await columns("main") == t.sources

    asyncio.run(main())


def test_config_and_component() -> None:
    config = config_module.parse(Config, [], env={"RECSYS_MAX_CANDIDATES": "500"})
    assert config.port == 50053 and config.max_candidates == 500
    with pytest.raises(config_module.ConfigError, match="--max-candidates"):
        config_module.parse(Config, ["--max-candidates", "0"], env={})
    component: Component = create(config)
    assert component.name == "retrieval"
    assert component.service_name == "recsys.v1.RetrievalService"
    assert component.needs_artifacts
    described: Any = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"]
    assert described.full_name == component.service_name
    request: Any = Request.DESCRIPTOR
    assert "user_embedding" not in request.fields_by_name  # fields 2 and 3 are reserved
    assert "recent_item_ids" not in request.fields_by_name
