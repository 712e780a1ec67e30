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
database is dropped at the end.
"""

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import platform
import queue
import random
import re
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from operator import itemgetter
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from uuid_utils.compat import uuid7

from agent_wake import (
    ClaimedFire,
    WakeFireRepository,
    WakeSchedule,
    WakeScheduleRepository,
    create_engine_and_session_factory,
    resolve_database_url,
    spans_partitions,
)
from agent_wake.testing import CapturedStatement, ScratchDatabase, capture_sql

SCHEDULES, FIRES, CONVERSATIONS = 100_000, 1_000_000, 10_000
RANDOM_SEED = 20_240_601
COPY_CHUNK = 20_000
BLOCK = 1_000  # operations per side per round, every path but claim_due
CLAIM_LIMIT = 200
CLAIM_BLOCK = 10  # claim_due calls per side per round
WARMUP_ROUNDS = 1
SIDES = ("repository", "sqlalchemy", "raw")
WORKER_COUNTS = (1, 2, 4, 8)
SCALING_POOL = 20_000  # due schedules per worker count, at --scale 1
NEXT_FIRE_DELAY = timedelta(hours=1)
# The targets: claim_due against raw asyncpg running its statements; a single-row path against
# the SQLAlchemy floor (no SQLAlchemy data layer can beat the cost of its own cursor layer).
BATCH_TARGET_OF_RAW, SINGLE_ROW_TARGET_OF_FLOOR = 0.8, 0.9
SCANNED_TABLES = ("agent_wake_schedules", "wake_fires")
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "tick_benchmark.json"

INTERVALS = (300, 900, 1_800, 3_600, 21_600, 86_400)
SCHEDULE_STATUS_WEIGHTS = {"active": 85, "paused": 10, "expired": 5}
FIRE_STATUS_WEIGHTS = {
    "fired": 620,
    "fired_silent": 150,
    "skipped_busy": 100,
    "failed": 60,
    "skipped_rate_limit": 30,
    "yielded": 20,
    "skipped_cap": 15,
    "skipped_no_handler": 4,
    "dispatching": 1,
}
OUTPUT = "Checked the inbox: two new messages, one needs a reply today."
SCHEDULE_COLUMNS = (
    "conversation_id",
    "schedule_id",
    "user_id",
    "agent_id",
    "schedule_type",
    "schedule_config",
    "task_prompt",
    "execution_mode",
    "status",
    "next_fire_at",
    "last_fired_at",
    "name",
    "missed_fire_policy",
    "date_created",
    "date_updated",
)
FIRE_COLUMNS = (
    "conversation_id",
    "fire_id",
    "schedule_id",
    "scheduled_fire_at",
    "actual_fired_at",
    "status",
    "display_suppressed",
    "output_text",
    "latency_ms",
    "error",
    "date_created",
)

Args = dict[str, Any]
Op = Callable[[int], Awaitable[None]]
Statement = tuple[str, tuple[Any, ...]]
Pair = tuple[uuid.UUID, uuid.UUID]  # (conversation_id, schedule_id)
Due = tuple[uuid.UUID, uuid.UUID, datetime]  # (conversation_id, schedule_id, period)
Sessions = async_sessionmaker[AsyncSession]


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self._drawn = label, max(total, 1), 0, 0.0

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._drawn < 0.2 and self.done < self.total:
            return
        self._drawn = now
        filled = 40 * self.done // self.total
        sys.stderr.write(f"\r{self.label:<9}[{'#' * filled}{'.' * (40 - filled)}] {self.done:>11,}/{self.total:,}")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


@dataclass(frozen=True)
class Seeded:
    tick: datetime  # the tick's "now": every seeded next_fire_at is after it, every fire an hour or more before
    owners: dict[uuid.UUID, tuple[uuid.UUID, uuid.UUID]]  # conversation_id -> (user_id, agent_id)
    schedules: list[Pair]
    active: list[Pair]
    fires: int


def fire_row(rng: random.Random, pair: Pair, scheduled: datetime, status: str) -> tuple[Any, ...]:
    actual = scheduled + timedelta(milliseconds=rng.randint(5, 3_000))
    return (
        pair[0],
        uuid7(),
        pair[1],
        scheduled,
        actual,
        status,
        status == "fired_silent",
        OUTPUT if status in ("fired", "fired_silent") else None,
        None if status == "dispatching" else rng.randint(200, 30_000),
        "handler timed out after 30s" if status == "failed" else None,
        actual,
    )


def generate(
    rng: random.Random, scale: float, tick: datetime
) -> tuple[Seeded, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Schedule and fire rows; conversations own a skewed (log-normal) share of the schedules."""
    conversation_count = max(1, round(CONVERSATIONS * scale))
    schedule_count = max(conversation_count, round(SCHEDULES * scale))
    agents = [uuid.uuid4() for _ in range(max(1, conversation_count // 10))]
    owners = {uuid7(): (uuid.uuid4(), rng.choice(agents)) for _ in range(conversation_count)}
    conversations = list(owners)
    weights = [rng.lognormvariate(0, 1) for _ in conversations]
    homes = conversations + rng.choices(conversations, weights, k=schedule_count - conversation_count)
    fires_of = Counter(rng.choices(range(schedule_count), k=round(FIRES * scale)))
    fire_statuses = iter(rng.choices(list(FIRE_STATUS_WEIGHTS), list(FIRE_STATUS_WEIGHTS.values()), k=fires_of.total()))
    statuses = rng.choices(list(SCHEDULE_STATUS_WEIGHTS), list(SCHEDULE_STATUS_WEIGHTS.values()), k=schedule_count)
    schedule_rows: list[tuple[Any, ...]] = []
    fire_rows: list[tuple[Any, ...]] = []
    schedules: list[Pair] = []
    progress = Progress("generate", schedule_count)
    for index, (conversation_id, status) in enumerate(zip(homes, statuses, strict=True)):
        pair = (conversation_id, uuid7())
        seconds = rng.choice(INTERVALS)
        fires = [
            fire_row(rng, pair, tick - timedelta(seconds=offset), next(fire_statuses))
            for offset in rng.sample(range(3_600, 30 * 86_400), fires_of[index])
        ]
        fire_rows += fires
        created = tick - timedelta(days=30 + 60 * rng.random())
        last_fired_at = max((fire[4] for fire in fires), default=None)
        schedule_rows.append(
            (
                *pair,
                *owners[conversation_id],
                "interval",
                json.dumps({"seconds": seconds}),
                f"Every {seconds // 60} minutes: check for anything that needs the user's attention.",
                "spawn" if rng.random() < 0.2 else "inline",
                status,
                tick + timedelta(seconds=rng.uniform(60, seconds)) if status == "active" else None,
                last_fired_at,
                f"check every {seconds // 60} min",
                "catch_up" if rng.random() < 0.1 else "coalesce",
                created,
                last_fired_at or created,
            )
        )
        schedules.append(pair)
        progress.advance()
    # COPY in time order, as the rows would have arrived.
    schedule_rows.sort(key=itemgetter(13))
    fire_rows.sort(key=itemgetter(4))
    active = [pair for pair, status in zip(schedules, statuses, strict=True) if status == "active"]
    return Seeded(tick, owners, schedules, active, len(fire_rows)), schedule_rows, fire_rows


async def seed(conn: asyncpg.Connection, scale: float, rng: random.Random) -> Seeded:
    seeded, schedule_rows, fire_rows = generate(rng, scale, datetime.now(UTC))
    progress = Progress("copy", len(schedule_rows) + len(fire_rows))
    for table, columns, rows in (
        ("agent_wake_schedules", SCHEDULE_COLUMNS, schedule_rows),
        ("wake_fires", FIRE_COLUMNS, fire_rows),
    ):
        for start in range(0, len(rows), COPY_CHUNK):
            chunk = rows[start : start + COPY_CHUNK]
            await conn.copy_records_to_table(table, records=chunk, columns=columns)
            progress.advance(len(chunk))
    print("vacuum analyze ...", file=sys.stderr)
    await conn.execute("VACUUM (ANALYZE) agent_wake_schedules, wake_fires")
    return seeded


def as_statements(captured: list[CapturedStatement]) -> list[Statement]:
    """Captured statements as the asyncpg dialect sends them ($n placeholders), parameters as a tuple."""
    return [(statement.sql, tuple(statement.parameters)) for statement in captured]


@dataclass(frozen=True)
class Recipe:
    """A hot path as a repository call, and the arguments of its i-th operation."""

    name: str
    batch: bool
    call: Callable[[AsyncSession, Args], Awaitable[object]]
    args: Callable[[int], Args]


@dataclass(frozen=True)
class HotPath:
    name: str
    batch: bool
    block: int
    repository: Op
    sqlalchemy: Op  # the captured SQL through SQLAlchemy's exec_driver_sql: the floor under the repository
    raw: Op
    statements: list[Statement]  # as captured, with real parameters: what EXPLAIN is run on
    prepare: Callable[[], Awaitable[None]] | None = None


async def get_schedule(session: AsyncSession, a: Args) -> object:
    return await WakeScheduleRepository(session).get(a["conversation_id"], a["schedule_id"])


async def create_schedule(session: AsyncSession, a: Args) -> object:
    return await WakeScheduleRepository(session).create(
        conversation_id=a["conversation_id"],
        user_id=a["user_id"],
        agent_id=a["agent_id"],
        schedule_type="interval",
        schedule_config={"seconds": 1800},
        next_fire_at=a["next_fire_at"],
        schedule_id=a["schedule_id"],
    )


async def list_schedules(session: AsyncSession, a: Args) -> object:
    return await WakeScheduleRepository(session).list_for_conversation(a["conversation_id"], limit=50)


async def fire_and_finalize(session: AsyncSession, a: Args) -> object:
    fires = WakeFireRepository(session)
    await fires.create_dispatching(
        conversation_id=a["conversation_id"],
        schedule_id=a["schedule_id"],
        scheduled_fire_at=a["scheduled_fire_at"],
        fire_id=a["fire_id"],
    )
    return await fires.finalize_success(a["conversation_id"], a["fire_id"], status="fired", output_text=OUTPUT)


async def count_recent_fires(session: AsyncSession, a: Args) -> object:
    return await WakeFireRepository(session).count_in_window(a["conversation_id"], a["since"])


def recipes(seeded: Seeded, rng: random.Random, operations: int) -> list[Recipe]:
    schedules = rng.choices(seeded.schedules, k=operations)
    active = rng.choices(seeded.active, k=operations)
    conversations = rng.choices(list(seeded.owners), k=operations)
    since = seeded.tick - timedelta(days=1)
    # Periods far after every other fire, each used once: the unique index never fires.
    periods = (seeded.tick + timedelta(days=365, microseconds=n) for n in itertools.count())

    def one_schedule(i: int) -> Args:
        return {"conversation_id": schedules[i][0], "schedule_id": schedules[i][1]}

    def new_schedule(i: int) -> Args:
        user_id, agent_id = seeded.owners[conversations[i]]
        return {
            "conversation_id": conversations[i],
            "schedule_id": uuid7(),
            "user_id": user_id,
            "agent_id": agent_id,
            "next_fire_at": datetime.now(UTC) + timedelta(minutes=30),
        }

    def one_conversation(i: int) -> Args:
        return {"conversation_id": conversations[i]}

    def new_fire(i: int) -> Args:
        conversation_id, schedule_id = active[i]
        return {
            "conversation_id": conversation_id,
            "schedule_id": schedule_id,
            "fire_id": uuid7(),
            "scheduled_fire_at": next(periods),
        }

    def recent_window(i: int) -> Args:
        return {"conversation_id": conversations[i], "since": since}

    return [
        Recipe("get", False, get_schedule, one_schedule),
        Recipe("create", False, create_schedule, new_schedule),
        Recipe("list_for_conversation(50)", False, list_schedules, one_conversation),
        Recipe("create_dispatching+finalize", False, fire_and_finalize, new_fire),
        Recipe("count_in_window", False, count_recent_fires, recent_window),
    ]


Template = list[tuple[str, list[tuple[str | None, Any]]]]  # per statement: (argument carried or None, sampled value)


def template_of(statements: list[Statement], sample: Args) -> Template:
    """Each parameter of ``statements`` as the ``sample`` argument equal to it, else as a constant."""
    values = list(sample.items())
    if any(first == second for (_, first), (_, second) in itertools.combinations(values, 2)):
        raise RuntimeError("the sample arguments must differ from each other")

    def slot(parameter: Any) -> tuple[str | None, Any]:
        return next((key for key, value in values if value == parameter), None), parameter

    template = [(sql, [slot(parameter) for parameter in params]) for sql, params in statements]
    if {key for _, slots in template for key, _ in slots} - {None} != set(sample):
        raise RuntimeError(f"not every argument of {sorted(sample)} shows in the captured parameters")
    return template


def fill(template: Template, args: Args) -> list[Statement]:
    return [(sql, tuple(value if key is None else args[key] for key, value in slots)) for sql, slots in template]


async def captured_template(
    name: str, engine: AsyncEngine, sample: Callable[[], Awaitable[Args]]
) -> tuple[Template, list[Statement]]:
    """Run the repository ``sample`` twice: the template from the first run, checked against the second."""
    with capture_sql(engine) as first_captured:
        first_args = await sample()
    with capture_sql(engine) as second_captured:
        second_args = await sample()
    first, second = as_statements(first_captured), as_statements(second_captured)
    template = template_of(first, first_args)
    if fill(template, second_args) != second:
        raise RuntimeError(f"{name}: the replayed SQL differs from what the repository sends")
    return template, first


async def replayed(recipe: Recipe, engine: AsyncEngine, sessions: Sessions, conn: asyncpg.Connection) -> HotPath:
    """The recipe through the repository, and its captured SQL replayed on ``conn`` with each operation's values."""
    samples = iter([recipe.args(0), recipe.args(1)])

    async def sample() -> Args:
        args = next(samples)
        async with sessions.begin() as session:
            await recipe.call(session, args)
        return args

    template, captured = await captured_template(recipe.name, engine, sample)

    async def through_repository(i: int) -> None:
        async with sessions.begin() as session:
            await recipe.call(session, recipe.args(i))

    async def through_sqlalchemy(i: int) -> None:
        async with sessions.begin() as session:
            connection = await session.connection()
            for sql, params in fill(template, recipe.args(i)):
                await fetched_through_sqlalchemy(connection, sql, params)

    async def raw(i: int) -> None:
        async with conn.transaction():
            for sql, params in fill(template, recipe.args(i)):
                await conn.fetch(sql, *params)

    return HotPath(recipe.name, recipe.batch, BLOCK, through_repository, through_sqlalchemy, raw, captured)


async def fetched_through_sqlalchemy(connection: AsyncConnection, sql: str, params: tuple[Any, ...]) -> Sequence[Any]:
    result = await connection.exec_driver_sql(sql, params)
    return result.all() if result.returns_rows else []


def one_hour_later(schedule: WakeSchedule, now: datetime) -> datetime:
    return now + NEXT_FIRE_DELAY


async def claim(session: AsyncSession, now: datetime) -> list[ClaimedFire]:
    return await WakeScheduleRepository(session).claim_due(now, limit=CLAIM_LIMIT, next_fire=one_hour_later)


def claim_columns(due: Sequence[Due], fire_ids: Sequence[uuid.UUID], tick: datetime) -> Args:
    """What the claim's writes carry, one list per column, in the order the schedules were locked."""
    return {
        "conversation_id": [conversation_id for conversation_id, _, _ in due],
        "schedule_id": [schedule_id for _, schedule_id, _ in due],
        "period": [period for _, _, period in due],
        "fire_id": list(fire_ids),
        "following": [tick + NEXT_FIRE_DELAY] * len(due),
        "status": ["active"] * len(due),
    }


def require_full_batch(count: int) -> None:
    if count != CLAIM_LIMIT:
        raise RuntimeError(f"claimed {count} schedules, not {CLAIM_LIMIT}: the due pool ran out")


async def reset_pool(conn: asyncpg.Connection, pool: Sequence[Due], tick: datetime) -> None:
    """Make exactly ``pool`` due at ``tick`` again, without the fires earlier claims wrote."""
    await conn.execute("DELETE FROM wake_fires WHERE status = 'dispatching' AND actual_fired_at = $1", tick)
    await conn.execute(
        "UPDATE agent_wake_schedules s SET status = 'active', next_fire_at = p.period "
        "FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[]) AS p(conversation_id, schedule_id, period) "
        "WHERE s.conversation_id = p.conversation_id AND s.schedule_id = p.schedule_id",
        *(list(column) for column in zip(*pool, strict=True)),
    )
    await conn.execute("VACUUM (ANALYZE) agent_wake_schedules")
    await conn.execute("VACUUM wake_fires")
    due = await conn.fetchval(
        "SELECT count(*) FROM agent_wake_schedules WHERE status = 'active' AND next_fire_at <= $1", tick
    )
    if due != len(pool):
        raise RuntimeError(f"{due} schedules are due at the tick, expected the pool's {len(pool)}")


async def claim_path(
    engine: AsyncEngine, sessions: Sessions, conn: asyncpg.Connection, tick: datetime, pool: Sequence[Due]
) -> HotPath:
    """claim_due through the repository, and its statements replayed on ``conn``: the locking SELECT as
    captured, then the writes with the locked rows' columns in place of the sampled ones."""

    async def prepare() -> None:
        await reset_pool(conn, pool, tick)

    async def sample() -> Args:
        async with sessions.begin() as session:
            claimed = await claim(session, tick)
        require_full_batch(len(claimed))
        due = [(fire.conversation_id, fire.schedule_id, fire.scheduled_fire_at) for fire in claimed]
        return claim_columns(due, [fire.fire_id for fire in claimed], tick)

    await prepare()
    template, captured = await captured_template("claim_due", engine, sample)
    (lock_sql, lock_slots), *writes = template
    if any(key is not None for key, _ in lock_slots):
        raise RuntimeError("claim_due: the locking SELECT should carry only constants")

    async def through_repository(i: int) -> None:
        async with sessions.begin() as session:
            require_full_batch(len(await claim(session, tick)))

    lock_params = tuple(value for _, value in lock_slots)

    async def through_sqlalchemy(i: int) -> None:
        async with sessions.begin() as session:
            connection = await session.connection(execution_options=spans_partitions("benchmark: claim_due floor"))
            rows = await fetched_through_sqlalchemy(connection, lock_sql, lock_params)
            require_full_batch(len(rows))
            due = [(row.conversation_id, row.schedule_id, row.next_fire_at) for row in rows]
            for sql, params in fill(writes, claim_columns(due, [uuid7() for _ in due], tick)):
                await fetched_through_sqlalchemy(connection, sql, params)

    async def raw(i: int) -> None:
        async with conn.transaction():
            rows = await conn.fetch(lock_sql, *lock_params)
            require_full_batch(len(rows))
            due = [(row["conversation_id"], row["schedule_id"], row["next_fire_at"]) for row in rows]
            for sql, params in fill(writes, claim_columns(due, [uuid7() for _ in due], tick)):
                await conn.fetch(sql, *params)

    return HotPath(
        f"claim_due({CLAIM_LIMIT})", True, CLAIM_BLOCK, through_repository, through_sqlalchemy, raw, captured, prepare
    )


async def measure(path: HotPath, rounds: int) -> dict[str, Any]:
    print(f"measuring {path.name} ...", file=sys.stderr)
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    for round_index in range(WARMUP_ROUNDS + rounds):
        if path.prepare is not None:
            await path.prepare()
        first_side = round_index % len(SIDES)
        for side in SIDES[first_side:] + SIDES[:first_side]:
            operation: Op = getattr(path, side)
            first = round_index * path.block
            began = time.perf_counter()
            for i in range(first, first + path.block):
                await operation(i)
            if round_index >= WARMUP_ROUNDS:
                rates[side].append(path.block / (time.perf_counter() - began))
    repository, floor, raw = (statistics.median(rates[side]) for side in ("repository", "sqlalchemy", "raw"))
    baseline = "raw" if path.batch else "sqlalchemy"
    target = BATCH_TARGET_OF_RAW if path.batch else SINGLE_ROW_TARGET_OF_FLOOR
    return {
        "path": path.name,
        "kind": "batch" if path.batch else "single-row",
        "repository_ops_s": repository,
        "sqlalchemy_ops_s": floor,
        "raw_ops_s": raw,
        "ratio": repository / raw,
        "sqlalchemy_ratio": floor / raw,
        "repository_vs_sqlalchemy": repository / floor,
        "target": target,
        "target_baseline": baseline,
        "met": repository / (raw if path.batch else floor) >= target,
        "rounds_ops_s": rates,
    }


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from plan_nodes(child)


def describe(node: dict[str, Any]) -> str:
    """``Index Scan wake_fires using wake_fires_pkey``, ``Insert wake_fires``, ..."""
    parts = [node.get("Operation") or node["Node Type"], node.get("Relation Name")]
    if "Index Name" in node:
        parts.append(f"using {node['Index Name']}")
    return " ".join(part for part in parts if part)


async def explained(conn: asyncpg.Connection, sql: str, params: Sequence[Any], *, generic: bool) -> dict[str, Any]:
    """EXPLAIN without ANALYZE (nothing runs): the custom plan for these parameters, or the
    generic plan PostgreSQL switches a prepared statement to after five executions."""
    if not generic:
        return json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *params))[0]["Plan"]
    # EXPLAIN EXECUTE takes no bind parameters: the values go in as typed literals.
    types = [
        await conn.fetchval("SELECT format_type($1::oid, NULL)", parameter.oid)
        for parameter in (await conn.prepare(sql)).get_parameters()
    ]
    literals = [
        f"{await conn.fetchval(f'SELECT quote_nullable(($1::{type_})::text)', value)}::{type_}"
        for type_, value in zip(types, params, strict=True)
    ]
    arguments = f"({', '.join(literals)})" if literals else ""
    await conn.execute(f"PREPARE generic_check AS {sql}")
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        explained_plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE generic_check{arguments}")
        return json.loads(explained_plan)[0]["Plan"]
    finally:
        await conn.execute("RESET plan_cache_mode")
        await conn.execute("DEALLOCATE generic_check")


async def plans_of(conn: asyncpg.Connection, path: HotPath) -> list[dict[str, Any]]:
    """Each statement's custom and generic plan: relations, indexes, Seq Scans."""
    summaries = []
    for sql, params in path.statements:
        for generic in (False, True):
            plan = await explained(conn, sql, params, generic=generic)
            nodes = [node for node in plan_nodes(plan) if "Relation Name" in node or "Index Name" in node]
            table = re.search("|".join(SCANNED_TABLES), sql)
            summaries.append(
                {
                    "path": path.name,
                    "statement": f"{sql.split(None, 1)[0]} {table.group() if table else ''}",
                    "plan": "generic" if generic else "custom",
                    "nodes": [describe(node) for node in nodes],
                    "seq_scan_on": [
                        node["Relation Name"]
                        for node in nodes
                        if node["Node Type"] == "Seq Scan" and node["Relation Name"] in SCANNED_TABLES
                    ],
                }
            )
    return summaries


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


async def benchmark(url: str, scale: float, rounds: int) -> dict[str, Any]:
    rng = random.Random(RANDOM_SEED)
    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    engine, sessions = create_engine_and_session_factory(url)
    try:
        began = time.monotonic()
        seeded = await seed(conn, scale, rng)
        seed_seconds = time.monotonic() - began
        async with sessions.begin() as session:  # first connect: the dialect's set-up queries stay out of captures
            await session.execute(text("SELECT 1"))
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


def print_report(report: dict[str, Any]) -> None:
    machine, data = report["machine"], report["data"]
    print(
        f"\nPostgreSQL {machine['postgresql']}, shared_buffers {machine['shared_buffers']}, {machine['cpu_count']} CPUs"
        f"; {data['schedules']:,} schedules ({data['active_schedules']:,} active), {data['fires']:,} fires, "
        f"{data['conversations']:,} conversations"
    )
    print(
        f"\n{'path':<30}{'repository':>11}{'sqlalchemy':>11}{'raw':>8}  (ops/s)"
        f"{'repo/raw':>10}{'sqla/raw':>10}{'repo/sqla':>11}{'target':>16}{'met?':>6}"
    )
    for row in report["paths"]:
        target = f"repo/{'raw' if row['target_baseline'] == 'raw' else 'sqla'} {row['target']:.1f}"
        print(
            f"{row['path']:<30}{row['repository_ops_s']:>11,.0f}{row['sqlalchemy_ops_s']:>11,.0f}"
            f"{row['raw_ops_s']:>8,.0f}{'':9}{row['ratio']:>10.2f}{row['sqlalchemy_ratio']:>10.2f}"
            f"{row['repository_vs_sqlalchemy']:>11.2f}"
            f"{target:>16}"
            f"{'yes' if row['met'] else 'NO':>6}"
        )
    print(f"\n{'claim_due(200) workers':<30}{'claimed':>18}{'seconds':>12}{'claims/s':>10}{'vs 1':>8}")
    for row in report["scaling"]:
        speedup = row["claims_per_s"] / report["scaling"][0]["claims_per_s"]
        print(
            f"{row['workers']:<30}{row['claimed']:>18,}{row['seconds']:>12.2f}{row['claims_per_s']:>10,.0f}{speedup:>8.2f}"
        )
    print(f"\n{'plan (EXPLAIN)':<30}{'statement':<28}{'plan':<9}{'scans':<8}nodes")
    for plan in report["plans"]:
        verdict = "SEQ" if plan["seq_scan_on"] else "ok"
        print(f"{plan['path']:<30}{plan['statement']:<28}{plan['plan']:<9}{verdict:<8}{'; '.join(plan['nodes'])}")
    seconds = report["seconds"]
    print(f"\nseeding {seconds['seed']:.1f} s, whole run {seconds['total']:.1f} s")


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
