"""Tick benchmark: the hot repository paths against raw asyncpg, on a realistic database.

Seeds a scratch database with COPY (at --scale 1: 100,000 schedules and
1,000,000 fires over 10,000 conversations), then measures:

- operations per second of each hot path on three sides, one transaction
  per operation on each, in rounds that rotate which side goes first
  (median of the rounds, after a warm-up round):
  the repository (a session from ``create_engine_and_session_factory``,
  partition guard on); raw asyncpg running the same SQL with the same
  parameters; and that same SQL sent through SQLAlchemy itself
  (``exec_driver_sql`` on the connection of a session from the same
  factory, guard on, rows fetched), the floor of a repository that sends
  its SQL through SQLAlchemy sessions. The SQL is captured from the repository
  with ``agent_wake.testing.capture_sql`` and replayed; the replayed
  statements and parameters are checked equal to what the repository sends
  for a second sample call before anything is timed;
- claims per second of ``claim_due(limit=200)`` with 1, 2, 4 and 8 worker
  processes, each with its own engine, from the same due pool each time,
  until no due schedule is left (and that every due schedule was claimed once);
- the plans of every statement of those paths, flagging a Seq Scan on
  agent_wake_schedules or wake_fires (the exit status is then 1): the custom
  plan for the captured parameters, and the generic plan (``PREPARE`` under
  ``plan_cache_mode = force_generic_plan``), which PostgreSQL itself switches
  a prepared statement to after five executions.

    AGENT_WAKE_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python bench/tick_benchmark.py
    python bench/tick_benchmark.py --scale 0.1 --rounds 3          # a quick run
    python bench/tick_benchmark.py --json /tmp/tick.json           # default bench/results/tick_benchmark.json

Without AGENT_WAKE_DATABASE_URL an embedded server is started. The scratch
database (``agent_wake.testing.ScratchDatabase``) is dropped at the end.

The parts, each a module beside this one: ``tick_seeding`` (the data),
``tick_paths`` (the hot paths and their three sides, and how one is
measured), ``tick_plans`` (EXPLAIN), ``tick_scaling`` (worker processes),
``tick_report`` (the table); this file runs them in order.
"""

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from tick_paths import (
    BLOCK,
    CLAIM_BLOCK,
    CLAIM_LIMIT,
    SIDES,
    WARMUP_ROUNDS,
    claim,
    claim_path,
    measure,
    recipes,
    replayed,
)
from tick_plans import plans_of
from tick_report import print_report
from tick_scaling import SCALING_POOL, measure_scaling
from tick_seeding import RANDOM_SEED, seed

from agent_wake import (
    create_engine_and_session_factory,
    resolve_database_url,
)
from agent_wake.testing import ScratchDatabase

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "tick_benchmark.json"


async def benchmark(url: str, scale: float, rounds: int) -> dict[str, Any]:
    rng = random.Random(RANDOM_SEED)
    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    engine, sessions = create_engine_and_session_factory(url)
    try:
        began = time.monotonic()
        seeded = await seed(conn, scale, rng)
        seed_seconds = time.monotonic() - began
        # First connect: the dialect's set-up queries, and the question a connection's first claim asks
        # (are the schedules distributed by Citus?), stay out of the captures. Nothing is due a year early.
        async with sessions.begin() as session:
            await session.execute(text("SELECT 1"))
            await claim(session, seeded.tick - timedelta(days=365))
        claim_pool_size, scaling_pool_size = len(SIDES) * CLAIM_BLOCK * CLAIM_LIMIT, round(SCALING_POOL * scale)
        if len(seeded.active) < max(claim_pool_size, scaling_pool_size):
            raise SystemExit(f"--scale {scale} leaves too few active schedules for the claim pools")
        # Periods within the hour before the tick: no seeded fire is that recent.
        pool = [
            (*pair, seeded.tick - timedelta(seconds=rng.uniform(1, 3_599)))
            for pair in rng.sample(seeded.active, max(claim_pool_size, scaling_pool_size))
        ]
        operations = (WARMUP_ROUNDS + rounds) * BLOCK
        paths = [await replayed(recipe, engine, sessions, conn) for recipe in recipes(seeded, rng, operations)]
        paths.append(await claim_path(engine, sessions, conn, seeded.tick, pool[:claim_pool_size]))
        plans = [summary for path in paths for summary in await plans_of(conn, path)]
        results = [await measure(path, rounds) for path in paths]
        scaling = await measure_scaling(conn, url, seeded.tick, pool[:scaling_pool_size])
        server_version = await conn.fetchval("SHOW server_version")
        shared_buffers = await conn.fetchval("SHOW shared_buffers")
    finally:
        await conn.close()
        await engine.dispose()
    return {
        "machine": {
            "cpu_count": os.cpu_count(),
            "postgresql": server_version,
            "shared_buffers": shared_buffers,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "data": {
            "scale": scale,
            "conversations": len(seeded.owners),
            "schedules": len(seeded.schedules),
            "active_schedules": len(seeded.active),
            "fires": seeded.fires,
        },
        "method": (
            f"ops/s = median of {rounds} rounds of {BLOCK} operations ({CLAIM_BLOCK} for claim_due) per side, "
            "the side going first rotating, after a warm-up round; one transaction per operation on every side; "
            "raw = the repository's SQL captured with before_cursor_execute and replayed with conn.fetch, "
            "parameters checked equal to the repository's; sqlalchemy = that SQL replayed with exec_driver_sql "
            "on a session's connection (guard on; claim_due's locking query in spans_partitions as in the "
            "repository), the floor of a repository that sends its SQL through SQLAlchemy sessions"
        ),
        "paths": results,
        "scaling": scaling,
        "plans": plans,
        "seconds": {"seed": seed_seconds},
    }


async def run_in_scratch_database(scale: float, rounds: int) -> dict[str, Any]:
    async with ScratchDatabase(resolve_database_url(allow_embedded=True), prefix="agent_wake_tick") as url:
        return await benchmark(url, scale, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the default data size (default 1)")
    parser.add_argument(
        "--rounds", type=int, default=6, help="measured rounds per path (default 6: each side goes first twice)"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write the figures ({DEFAULT_JSON})")
    arguments = parser.parse_args()
    began = time.monotonic()
    report = asyncio.run(run_in_scratch_database(arguments.scale, arguments.rounds))
    report["seconds"]["total"] = time.monotonic() - began
    print_report(report)
    arguments.json.parent.mkdir(parents=True, exist_ok=True)
    arguments.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {arguments.json}")
    seq_scans = [plan for plan in report["plans"] if plan["seq_scan_on"]]
    if seq_scans:
        flagged = ", ".join(f"{plan['path']} ({plan['plan']} plan)" for plan in seq_scans)
        sys.exit(f"Seq Scan on a wake table in: {flagged}")


if __name__ == "__main__":
    main()
