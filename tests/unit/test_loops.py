"""PeriodicTask: background upkeep that always stops, even when a step swallows its cancellation."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from services.common.loops import PeriodicTask


def test_steps_repeat_until_stopped() -> None:
    async def main() -> int:
        steps = 0

        async def step() -> None:
            nonlocal steps
            steps += 1

        task = PeriodicTask("count", step, interval_s=0.01)
        await asyncio.sleep(0.2)
        await task.stop()
        after_stop = steps
        await asyncio.sleep(0.05)
        assert steps == after_stop  # nothing runs after stop
        return steps

    assert asyncio.run(main()) >= 3


def test_stop_ends_a_loop_whose_step_swallowed_the_cancellation() -> None:
    """What redis-py does when a cancellation lands mid-command (redis/redis-py#2028): the call returns
    normally. The loop must still end, or the server's shutdown waits forever."""

    async def main() -> bool:
        in_step = asyncio.Event()
        swallowed = False

        async def swallowing_step() -> None:
            nonlocal swallowed
            in_step.set()
            if swallowed:  # the race hits once; later cancels (asyncio.run's clean-up) go through
                await asyncio.sleep(0.05)
                return
            with contextlib.suppress(asyncio.CancelledError):  # the library's bug, simulated
                await asyncio.sleep(0.05)
                return
            swallowed = True

        task = PeriodicTask("swallow", swallowing_step, interval_s=0.01)
        await in_step.wait()
        stopping = asyncio.ensure_future(task.stop())
        done, _ = await asyncio.wait({stopping}, timeout=5)  # waits without cancelling `stop`
        return swallowed and stopping in done

    assert asyncio.run(main()), "the cancellation was not swallowed, or stop() did not end the loop"


def test_a_failing_step_is_logged_and_the_next_one_runs(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> int:
        steps = 0

        async def fails_once() -> None:
            nonlocal steps
            steps += 1
            if steps == 1:
                raise ValueError("broken upkeep")

        task = PeriodicTask("flaky", fails_once, interval_s=0.01)
        await asyncio.sleep(0.1)
        await task.stop()
        return steps

    assert asyncio.run(main()) >= 2
    failures = [r for r in caplog.records if r.message == "background step failed"]
    assert len(failures) == 1 and failures[0].__dict__["task"] == "flaky"
    assert failures[0].exc_info is not None and "broken upkeep" in str(failures[0].exc_info[1])
