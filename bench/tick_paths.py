"""The hot paths of the tick benchmark, each on three sides (the repository, its SQL through
SQLAlchemy, the same SQL through raw asyncpg), and how one is measured."""

import itertools
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from tick_seeding import OUTPUT, Seeded
from uuid_utils.compat import uuid7

from agent_wake import (
    ClaimedFire,
    WakeFireRepository,
    WakeSchedule,
    WakeScheduleRepository,
    spans_partitions,
)
from agent_wake.testing import CapturedStatement, capture_sql

BLOCK = 1_000  # operations per side per round, every path but claim_due
CLAIM_LIMIT = 200
CLAIM_BLOCK = 10  # claim_due calls per side per round
WARMUP_ROUNDS = 1
SIDES = ("repository", "sqlalchemy", "raw")

NEXT_FIRE_DELAY = timedelta(hours=1)
# The targets: claim_due against raw asyncpg running its statements; a single-row path against
# the SQLAlchemy floor (no SQLAlchemy data layer can beat the cost of its own cursor layer).
BATCH_TARGET_OF_RAW, SINGLE_ROW_TARGET_OF_FLOOR = 0.8, 0.9

Args = dict[str, Any]
Op = Callable[[int], Awaitable[None]]
Statement = tuple[str, tuple[Any, ...]]

Due = tuple[uuid.UUID, uuid.UUID, datetime]  # (conversation_id, schedule_id, period)
Sessions = async_sessionmaker[AsyncSession]


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
