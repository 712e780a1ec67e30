"""Claim throughput on a Citus cluster next to one PostgreSQL server.

The same workload on each side, in a fresh database of its own: the tick
benchmark's data (``tick_seeding``: at the default --scale 0.25, 25,000
schedules and 250,000 fires over 2,500 conversations), of which a pool of
20,000 active schedules is made due at the
tick; then ``claim_due(limit=200)`` with 1, 2, 4 and 8 worker processes,
each with its own engine, until nothing is due (``tick_scaling.run_workers``,
as the tick benchmark runs it). Each worker count runs --rounds times on each
side, the sides taking turns, and each round is checked: exactly one
``dispatching`` fire per pool schedule, and nothing left due. The figure is
the median of the rounds.

- **single server**: a scratch database on AGENT_WAKE_DATABASE_URL's server
  (default ``postgresql://postgres@127.0.0.1:5432/postgres``), migrated: the
  schema as shipped, the plain claim path;
- **Citus**: a database made with ``shared/citus/cluster db`` (the script in
  AGENT_WAKE_CITUS_CLUSTER, else ``../shared/citus/cluster`` beside the
  repository, else ``/work/shared/citus/cluster``), migrated, then
  distributed with ``agent_wake.distribution.distribute_schema``: the
  claim's Citus path.

Both databases get ``jit = off`` (and the Citus one
``citus.override_table_visibility = off``): asyncpg looks up the array types
of the claim's statements on each new connection, and on a Citus coordinator
that catalog query otherwise takes seconds (JIT compilation, and the filter
with which Citus hides shards from ``pg_class``), inside the timed part.

    PYTHONPATH=src python bench/citus_claim_benchmark.py
    python bench/citus_claim_benchmark.py --rounds 1 --pool 5000   # a quick run
    python bench/citus_claim_benchmark.py --citus-setting citus.max_cached_conns_per_worker=16

``--citus-setting NAME=VALUE`` (repeatable) sets a setting on the Citus
database (``ALTER DATABASE``) before anything connects: the claim's scan
reaches every shard, and with Citus's defaults each scan opens connections to
the workers that its transaction's end closes again.

Writes the figures to bench/results/citus_claim_benchmark.json.
"""

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from tick_paths import CLAIM_LIMIT, Due, reset_pool
from tick_scaling import WORKER_COUNTS, run_workers
from tick_seeding import RANDOM_SEED, seed

from agent_wake import alembic_config, resolve_database_url
from agent_wake.distribution import distribute_schema
from agent_wake.testing import ScratchDatabase

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "citus_claim_benchmark.json"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
CLUSTER_VARIABLE = "AGENT_WAKE_CITUS_CLUSTER"
REPOSITORY = Path(__file__).resolve().parent.parent
SIDES = ("single server", "Citus")
# asyncpg's type lookups on a new connection: see the module docstring.
WITHOUT_SLOW_INTROSPECTION = {"jit": "off"}
CITUS_WITHOUT_SLOW_INTROSPECTION = {"citus.override_table_visibility": "off"}


def cluster_script() -> Path:
    configured = os.environ.get(CLUSTER_VARIABLE)
    if configured:
        return Path(configured)
    beside = REPOSITORY.parent / "shared" / "citus" / "cluster"
    return beside if beside.exists() else Path("/work/shared/citus/cluster")


def cluster(*arguments: str) -> str:
    done = subprocess.run([str(cluster_script()), *arguments], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"{cluster_script()} {' '.join(arguments)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def as_asyncpg(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def set_for_database(url: str, settings: dict[str, str]) -> None:
    admin = await asyncpg.connect(as_asyncpg(url))
    try:
        name = await admin.fetchval("SELECT current_database()")
        for setting, value in settings.items():
            await admin.execute(f"ALTER DATABASE \"{name}\" SET {setting} = '{value}'")
    finally:
        await admin.close()


@asynccontextmanager
async def single_server_database() -> AsyncIterator[str]:
    server = os.environ.get("AGENT_WAKE_DATABASE_URL", DEFAULT_SERVER)
    async with ScratchDatabase(resolve_database_url(server), prefix="agent_wake_citus_bench") as url:
        await set_for_database(url, WITHOUT_SLOW_INTROSPECTION)
        yield url


@asynccontextmanager
async def citus_database(settings: dict[str, str]) -> AsyncIterator[str]:
    name = f"agent_wake_citus_bench_{uuid.uuid4().hex[:10]}"
    url = await asyncio.to_thread(cluster, "db", name)
    try:
        await asyncio.to_thread(command.upgrade, alembic_config(url), "head")
        engine = create_async_engine(resolve_database_url(url))
        try:
            async with engine.connect() as connection:
                distribution = await connection.run_sync(distribute_schema, "public")
        finally:
            await engine.dispose()
        if not distribution.distributed:
            raise SystemExit(f"{name} was not distributed: {distribution}")
        await set_for_database(url, {**WITHOUT_SLOW_INTROSPECTION, **CITUS_WITHOUT_SLOW_INTROSPECTION, **settings})
        yield resolve_database_url(url)
    finally:
        await asyncio.to_thread(cluster, "dropdb", name)


async def seeded_pool(url: str, scale: float, pool_size: int) -> tuple[asyncpg.Connection, Any, list[Due]]:
    """The tick benchmark's data in ``url``, and a pool of active schedules to make due at its tick."""
    rng = random.Random(RANDOM_SEED)
    conn = await asyncpg.connect(as_asyncpg(url))
    seeded = await seed(conn, scale, rng)
    if len(seeded.active) < pool_size:
        raise SystemExit(
            f"--scale {scale} gives {len(seeded.active):,} active schedules, fewer than --pool {pool_size:,}"
        )
    pool = [
        (*pair, seeded.tick - timedelta(seconds=rng.uniform(1, 3_599))) for pair in rng.sample(seeded.active, pool_size)
    ]
    return conn, seeded.tick, pool


async def measured_round(conn: asyncpg.Connection, url: str, tick: Any, pool: list[Due], workers: int) -> float:
    """Claims per second of one round, checked: one fire per pool schedule, nothing left due."""
    await reset_pool(conn, pool, tick)
    claimed, seconds = await asyncio.to_thread(run_workers, url, tick, workers)
    written, distinct = await conn.fetchrow(
        "SELECT count(*), count(DISTINCT (conversation_id, schedule_id, scheduled_fire_at)) FROM wake_fires "
        "WHERE status = 'dispatching' AND actual_fired_at = $1",
        tick,
    )
    left = await conn.fetchval(
        "SELECT count(*) FROM agent_wake_schedules WHERE status = 'active' AND next_fire_at <= $1", tick
    )
    if not claimed == written == distinct == len(pool) or left:
        raise RuntimeError(
            f"{workers} workers: claimed {claimed}, wrote {written} fires for {distinct} periods, {left} left due"
        )
    return claimed / seconds


async def benchmark(scale: float, pool_size: int, rounds: int, citus_settings: dict[str, str]) -> dict[str, Any]:
    databases: dict[str, Callable[[], AbstractAsyncContextManager[str]]] = {
        "single server": single_server_database,
        "Citus": lambda: citus_database(citus_settings),
    }
    rates: dict[str, dict[int, list[float]]] = {side: {workers: [] for workers in WORKER_COUNTS} for side in SIDES}
    began = time.monotonic()
    async with databases["single server"]() as plain_url, databases["Citus"]() as citus_url:
        urls = {"single server": plain_url, "Citus": citus_url}
        setups = {}
        for side in SIDES:
            print(f"{side}: seeding ...", file=sys.stderr)
            setups[side] = await seeded_pool(urls[side], scale, pool_size)
        try:
            versions = {side: await setups[side][0].fetchval("SHOW server_version") for side in SIDES}
            for workers in WORKER_COUNTS:
                for round_index in range(rounds):
                    for side in SIDES if round_index % 2 == 0 else reversed(SIDES):
                        conn, tick, pool = setups[side]
                        print(f"{side}: {workers} worker(s), round {round_index + 1} ...", file=sys.stderr)
                        rates[side][workers].append(await measured_round(conn, urls[side], tick, pool, workers))
        finally:
            for conn, _, _ in setups.values():
                await conn.close()
    baseline = statistics.median(rates["single server"][1])
    rows = []
    for workers in WORKER_COUNTS:
        plain, distributed = (statistics.median(rates[side][workers]) for side in SIDES)
        rows.append(
            {
                "workers": workers,
                "single_server_claims_per_s": plain,
                "citus_claims_per_s": distributed,
                "single_server_vs_single_server_1_worker": plain / baseline,
                "citus_vs_single_server_1_worker": distributed / baseline,
                "citus_vs_single_server": distributed / plain,
                "rounds": {side: rates[side][workers] for side in SIDES},
            }
        )
    return {
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "servers": versions},
        "workload": {
            "scale": scale,
            "pool": pool_size,
            "claim_limit": CLAIM_LIMIT,
            "pool_conversations": len({conversation_id for conversation_id, _, _ in setups["Citus"][2]}),
            "rounds": rounds,
            "citus_settings": citus_settings,
        },
        "rows": rows,
        "seconds": time.monotonic() - began,
    }


def print_table(report: dict[str, Any]) -> None:
    workload = report["workload"]
    print(
        f"\nclaim_due({workload['claim_limit']}) over {workload['pool']:,} due schedules "
        f"in {workload['pool_conversations']:,} conversations, "
        f"median of {workload['rounds']} rounds; servers {report['machine']['servers']}, "
        f"{report['machine']['cpu_count']} CPUs; Citus settings {workload['citus_settings'] or 'default'}"
    )
    print(
        f"\n{'workers':>7}{'single server':>15}{'Citus':>10}  (claims/s)"
        f"{'single/1':>10}{'Citus/1':>9}{'Citus/single':>14}"
    )
    for row in report["rows"]:
        print(
            f"{row['workers']:>7}{row['single_server_claims_per_s']:>15,.0f}{row['citus_claims_per_s']:>10,.0f}"
            f"{'':11}{row['single_server_vs_single_server_1_worker']:>10.2f}"
            f"{row['citus_vs_single_server_1_worker']:>9.2f}{row['citus_vs_single_server']:>14.2f}"
        )
    print("(x/1: against the single server's one-worker figure of this run)")
    print(f"\nwhole run {report['seconds']:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.25, help="fraction of tick_seeding's data (default 0.25)")
    parser.add_argument("--pool", type=int, default=20_000, help="due schedules per round (default 20,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per worker count and side (default 3)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write the figures ({DEFAULT_JSON})")
    parser.add_argument(
        "--citus-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the Citus database (repeatable)",
    )
    arguments = parser.parse_args()
    citus_settings = dict(setting.split("=", 1) for setting in arguments.citus_setting)
    report = asyncio.run(benchmark(arguments.scale, arguments.pool, arguments.rounds, citus_settings))
    print_table(report)
    arguments.json.parent.mkdir(parents=True, exist_ok=True)
    arguments.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"figures written to {arguments.json}")


if __name__ == "__main__":
    main()
