"""Feedback is never refused because the store is down: accepted into the features service's spool
while Redis is away, in the log once each and in order when it is back; a retried call is written once."""

from __future__ import annotations

import time
from pathlib import Path

from bench.chaos import read_log
from services.client import Client, event
from services.local import LocalPlatform, free_port
from tests.support import RELAXED_BUDGETS, redis_server


def test_feedback_while_redis_is_down_is_accepted_and_written_once_in_order(
    artifacts_root: Path, tmp_path: Path
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    platform = LocalPlatform.on_free_ports(
        artifacts_root,
        tmp_path / "logs",
        redis_url=url,
        extra_args={"features": ["--reload-interval-s", "0.5"], "gateway": RELAXED_BUDGETS},
    )
    with redis_server(tmp_path / "redis", port):
        platform.start()
    # Redis is down from here.
    try:
        with Client(platform.address("gateway")) as client:
            sent = [event("1", f"down-{i}", "click", event_id=f"fb-{i}") for i in range(30)]
            for e in sent:
                assert client.feedback([e]) == 1
            assert client.feedback(sent[:5]) == 5  # a client's retry of events already accepted
            with redis_server(tmp_path / "redis-again", port):  # back, empty
                deadline = time.monotonic() + 30
                while len(read_log(url)) < len(sent) and time.monotonic() < deadline:
                    time.sleep(0.2)
                time.sleep(1.0)  # anything delivered twice would land by now
                logged = [e for e in read_log(url) if e.event_id.startswith("fb-")]
                assert [e.event_id for e in logged] == [e.event_id for e in sent]
                assert [e.item_id for e in logged] == [f"down-{i}" for i in range(30)]
    finally:
        platform.stop()
