"""The worker threads are shared fairly between kinds: one kind's runaway turns never take
every thread, and a free thread goes to the kind holding the fewest."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
import trio

from roost.core.background_threads import BackgroundThreads
from roost.core.services import WorkerPool

from ..conftest import until


async def test_a_kind_holding_every_thread_but_one_leaves_that_one_to_the_others() -> None:
    pool = WorkerPool(4)
    release = threading.Event()
    started: list[str] = []

    def hog() -> None:
        started.append("hog")
        release.wait(30)

    with trio.fail_after(30):
        await pool.run(lambda: None, owner="hog")  # a short call: it may take more threads
        async with trio.open_nursery() as nursery:
            for _ in range(8):  # more looping turns of one kind than there are threads
                nursery.start_soon(lambda: pool.run(hog, owner="hog"))
            await until(lambda: not (len(started) < 3))
            await trio.sleep(0.05)
            # One kind never takes the fourth thread: it is there for another kind.
            assert pool.holding() == {"hog": 3}
            neighbour = await pool.run(lambda: "served", owner="echo")
            assert neighbour == "served"
            assert pool.holding() == {"hog": 3}
            release.set()
    assert pool.running == 0


async def test_one_kind_uses_every_thread_but_one() -> None:
    pool = WorkerPool(3)
    inside = 0
    most = 0
    lock = threading.Lock()
    go = threading.Event()

    def work() -> None:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        go.wait(10)
        with lock:
            inside -= 1

    with trio.fail_after(30):
        await pool.run(lambda: None, owner="only")  # a short call: it may take more threads
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(lambda: pool.run(work, owner="only"))
            await until(lambda: not (pool.running < 2))
            await trio.sleep(0.05)
            assert pool.running == 2  # the third waits: one thread stays for other kinds
            go.set()
    assert most == 2


async def test_a_free_thread_goes_to_the_kind_holding_the_fewest() -> None:
    pool = WorkerPool(4, long_call_s=60)  # these calls wait on gates: not long ones
    names = ("a1", "a2", "b1", "c1", "a3", "c2")
    gates = {name: threading.Event() for name in names}
    order: list[str] = []

    def turn(name: str) -> None:
        order.append(name)
        gates[name].wait(10)

    with trio.fail_after(30):
        for owner in "abc":  # short calls: each kind may take more than one thread
            await pool.run(lambda: None, owner=owner)
        async with trio.open_nursery() as nursery:
            for running, name in enumerate(("a1", "a2", "b1", "c1"), start=1):
                nursery.start_soon(lambda n=name: pool.run(lambda: turn(n), owner=n[0]))
                await until(lambda r=running: pool.running == r)
            assert pool.holding() == {"a": 2, "b": 1, "c": 1}
            # a waits first, then c: both wait for a thread.
            nursery.start_soon(lambda: pool.run(lambda: turn("a3"), owner="a"))
            await trio.sleep(0.05)
            nursery.start_soon(lambda: pool.run(lambda: turn("c2"), owner="c"))
            await trio.sleep(0.05)
            gates["b1"].set()  # frees a thread: c holds 1, a holds 2, so c2 goes first
            await until(lambda: "c2" in order)
            assert "a3" not in order
            for name in names:
                gates[name].set()
    assert sorted(order[:4]) == ["a1", "a2", "b1", "c1"]
    assert order[4:] == ["c2", "a3"]


async def test_a_turn_cancelled_while_waiting_gives_its_place_back() -> None:
    pool = WorkerPool(1)
    gate = threading.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: pool.run(lambda: gate.wait(10), owner="a"))
            await until(lambda: not (pool.running < 1))
            with trio.move_on_after(0.05):
                await pool.run(lambda: None, owner="b")  # waits, then is cancelled
            gate.set()
        assert await pool.run(lambda: "after", owner="b") == "after"
    assert pool.running == 0


async def test_a_kind_running_long_calls_holds_one_thread() -> None:
    pool = WorkerPool(4, long_call_s=0.05, long_memory_s=60)
    release = threading.Event()
    inside = 0
    most = 0
    lock = threading.Lock()

    def hog() -> None:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        release.wait(30)
        with lock:
            inside -= 1

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await pool.run(lambda: None, owner="hog")  # a short call...
            nursery.start_soon(lambda: pool.run(hog, owner="hog"))
            await until(lambda: not (inside < 1))
            await trio.sleep(0.1)  # ...then one that runs long
            for _ in range(3):
                nursery.start_soon(lambda: pool.run(hog, owner="hog"))
            await trio.sleep(0.05)
            assert pool.holding() == {"hog": 1}  # the other three wait for that one
            assert await pool.run(lambda: "served", owner="echo") == "served"
            release.set()
    assert most == 1  # and, having run long, the kind still gets one thread at a time


async def test_a_kind_holds_one_thread_until_a_call_of_it_ends_short() -> None:
    pool = WorkerPool(4)
    release = threading.Event()
    started: list[str] = []

    def hog() -> None:
        started.append("hog")
        release.wait(30)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(4):  # a new kind, all at once: it has yet to show it runs short
                nursery.start_soon(lambda: pool.run(hog, owner="new"))
            await until(lambda: not (len(started) < 1))
            await trio.sleep(0.05)
            assert pool.holding() == {"new": 1}
            release.set()
    assert pool.running == 0


def _spin(seconds: float) -> None:
    began = time.thread_time()
    while time.thread_time() - began < seconds:
        pass


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
async def test_a_kind_that_runs_long_runs_at_a_lower_cpu_priority() -> None:
    pool = WorkerPool(
        2,
        long_call_s=0.05,
        background=BackgroundThreads(2, nice=5),
        background_call_s=0.02,
        long_memory_s=0.5,
    )
    base = _nice()
    try:
        with trio.fail_after(30):
            # A kind that has yet to show its calls are short runs in the background.
            assert await pool.run(_nice, owner="new") == base + 5
            assert await pool.run(_nice, owner="new") == base  # its last call was short
            await pool.run(lambda: time.sleep(0.1), owner="new")  # a long call
            assert await pool.run(_nice, owner="new") == base + 5
            assert await pool.run(_nice, owner="other") == base + 5  # new too
            assert await pool.run(_nice, owner="other") == base
            # A call of 20 ms of CPU or more (not long enough to hold one thread only) lowers
            # the kind's priority for a while too; waiting as long does not.
            await pool.run(lambda: time.sleep(0.03), owner="other")
            assert await pool.run(_nice, owner="other") == base
            await pool.run(lambda: _spin(0.03), owner="other")
            assert await pool.run(_nice, owner="other") == base + 5
            await trio.sleep(0.6)
            assert await pool.run(_nice, owner="other") == base
            assert _nice() == base  # the event loop's thread is untouched
    finally:
        pool.close()


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
async def test_a_kind_taking_more_than_its_share_of_the_cpu_runs_at_a_lower_priority() -> None:
    pool = WorkerPool(2, background=BackgroundThreads(2, nice=5), share_window_s=0.3)
    base = _nice()

    async def next_window(closed_by: str = "light") -> None:
        """Let the window run out; the next call that ends closes it."""
        await trio.sleep(0.3)
        await pool.run(lambda: None, owner=closed_by)

    async def busy(owner: str, calls: int) -> None:
        """``calls`` quick calls of 10 ms of CPU each (far under background_call_s)."""
        for _ in range(calls):
            await pool.run(lambda: _spin(0.01), owner=owner)

    try:
        with trio.fail_after(30):
            for kind in ("many", "light"):  # new kinds run in the background until quick
                await pool.run(lambda: None, owner=kind)
            assert await pool.run(_nice, owner="many") == base
            # Many quick calls against a few: 100 ms of 105, over 1.5 times an even share.
            await next_window()
            await busy("many", 10)
            await pool.run(lambda: _spin(0.005), owner="light")
            await next_window()
            assert await pool.run(_nice, owner="many") == base + 5
            assert await pool.run(_nice, owner="light") == base
            # Beside the wakes: its calls are quick, they wait behind no kind's long ones.
            name = await pool.run(lambda: threading.current_thread().name, owner="many")
            assert name.startswith("roost-wake")
            # A window in which the kinds hardly ran (under a tenth of a core): no one's
            # share is too much.
            await next_window()
            assert await pool.run(_nice, owner="many") == base
            # A window in which one kind alone took the CPU: it has no one to share with.
            await busy("many", 10)
            await next_window(closed_by="many")
            assert await pool.run(_nice, owner="many") == base
            # Even shares are fair shares, however busy.
            await next_window()
            await busy("many", 5)
            await busy("light", 5)
            await next_window()
            assert await pool.run(_nice, owner="many") == base
            assert await pool.run(_nice, owner="light") == base
    finally:
        pool.close()


async def test_a_heavy_kinds_calls_never_hold_up_another_kinds_wakes() -> None:
    pool = WorkerPool(3, background=BackgroundThreads(1))
    release = threading.Event()

    def thread_name() -> str:
        return threading.current_thread().name

    def heavy() -> str:
        assert release.wait(10)
        return thread_name()

    try:
        with trio.fail_after(30):
            await pool.run(lambda: None, owner="quick")  # a call that ends short
            async with trio.open_nursery() as nursery:
                names: list[str] = []

                async def run_heavy() -> None:
                    names.append(await pool.run(heavy, owner="heavy"))

                nursery.start_soon(run_heavy)
                await until(lambda: pool.holding().get("heavy") == 1)
                # The one background thread of the heavy lane is taken; a wake still runs.
                waking = await pool.run(thread_name, owner="quick", background=True)
                assert waking.startswith("roost-wake")
                assert not names
                release.set()
            assert names[0].startswith("roost-background")
    finally:
        release.set()
        pool.close()


def test_disposing_runs_off_the_calling_thread_and_inline_once_let_go() -> None:
    background = BackgroundThreads(1)
    pool = WorkerPool(2, background=background)
    ran_on: list[str] = []
    done = threading.Event()

    def close() -> None:
        ran_on.append(threading.current_thread().name)
        done.set()

    pool.dispose(close)
    assert done.wait(10)
    assert ran_on[0].startswith("roost-dispose")
    pool.close()
    pool.dispose(close)  # the threads are gone: right here
    assert ran_on[1] == threading.current_thread().name
    WorkerPool(2).dispose(close)  # no background threads: right here
    assert ran_on[2] == threading.current_thread().name
