"""Claim throughput with 1 to 8 worker processes, each with its own engine."""

import asyncio
import multiprocessing
import queue
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

import asyncpg
from tick_paths import Due, claim, reset_pool

from agent_wake import (
    create_engine_and_session_factory,
)

WORKER_COUNTS = (1, 2, 4, 8)
SCALING_POOL = 20_000  # due schedules per worker count, at --scale 1


async def claim_until_empty(url: str, tick: datetime, start: Barrier) -> tuple[int, float, float]:
    engine, sessions = create_engine_and_session_factory(url)
    try:
        async with sessions.begin() as session:  # connect and prepare the locking SELECT before the start
            await claim(session, tick - timedelta(days=365))
        await asyncio.to_thread(start.wait, 300)  # a worker that died breaks it for all
        began, claimed = time.monotonic(), 0
        while True:
            async with sessions.begin() as session:
                batch = await claim(session, tick)
            if not batch:
                return claimed, began, time.monotonic()
            claimed += len(batch)
    finally:
        await engine.dispose()


def claim_worker(url: str, tick: datetime, start: Barrier, results: "Queue[tuple[int, float, float]]") -> None:
    """One worker process: claim and commit batches until none is due; report (claimed, began, ended)."""
    results.put(asyncio.run(claim_until_empty(url, tick, start)))


def run_workers(url: str, tick: datetime, workers: int) -> tuple[int, float]:
    """Claimed schedules and seconds from the first worker's start to the last one's end."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=claim_worker, args=(url, tick, start, results)) for _ in range(workers)]
    for process in processes:
        process.start()
    outcomes: list[tuple[int, float, float]] = []
    try:
        while len(outcomes) < workers:
            try:
                outcomes.append(results.get(timeout=1))
            except queue.Empty:
                if any(process.exitcode for process in processes):
                    raise RuntimeError("a claim worker failed (its traceback is above)") from None
    finally:
        for process in processes:
            process.join(timeout=30)
    return sum(claimed for claimed, _, _ in outcomes), max(o[2] for o in outcomes) - min(o[1] for o in outcomes)


async def measure_scaling(conn: asyncpg.Connection, url: str, tick: datetime, pool: Sequence[Due]) -> list[Any]:
    rows = []
    for workers in WORKER_COUNTS:
        print(f"claiming {len(pool):,} due schedules with {workers} worker(s) ...", file=sys.stderr)
        await reset_pool(conn, pool, tick)
        claimed, seconds = await asyncio.to_thread(run_workers, url, tick, workers)
        written, distinct = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT schedule_id) FROM wake_fires "
            "WHERE status = 'dispatching' AND actual_fired_at = $1",
            tick,
        )
        if not claimed == written == distinct == len(pool):
            raise RuntimeError(f"{workers} workers: claimed {claimed}, wrote {written} fires for {distinct} schedules")
        rows.append({"workers": workers, "claimed": claimed, "seconds": seconds, "claims_per_s": claimed / seconds})
    return rows
