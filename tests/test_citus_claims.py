"""claim_due on a Citus cluster, where agent_wake_schedules is distributed by
conversation_id: the same guarantees as on one server, without a row lock in
a statement that spans shards.

Runs on the real 3-node cluster that ``shared/citus/cluster`` manages (the
script in ``AGENT_WAKE_CITUS_CLUSTER``, else ``../shared/citus/cluster``
beside the repository, else ``/work/shared/citus/cluster``), in a database of
its own made for this module, migrated with our Alembic scripts and
distributed with :func:`agent_wake.distribution.distribute_schema`. Skipped,
with the reason, when the script is missing or the cluster is not up.
"""

import asyncio
import json
import os
import re
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from agent_wake import (
    ClaimedFire,
    DueSchedule,
    WakeScheduleRepository,
    alembic_config,
    create_engine_and_session_factory,
    resolve_database_url,
)
from agent_wake._statements import for_driver
from agent_wake.distribution import distribute_schema
from agent_wake.testing import CapturedStatement, capture_sql
from tests.clock import NOW

HOUR = timedelta(hours=1)
REPOSITORY = Path(__file__).resolve().parent.parent
CLUSTER_VARIABLE = "AGENT_WAKE_CITUS_CLUSTER"
TICK = (
    "schedules.citus_installed",
    "schedules.hash_distributed",
    "schedules.claim_scan_sharded",
    "schedules.claim_scan_sharded_after",
    "schedules.claim_lock_among",
    "schedules.claim_fires",
    "schedules.claim_reschedule",
)
NAME_OF_SQL = {for_driver(name).sql: name for name in TICK}
SHARD_TABLE = re.compile(r"\b(?:agent_wake_schedules|wake_fires)_(\d+)\b")


def cluster_script() -> Path:
    configured = os.environ.get(CLUSTER_VARIABLE)
    if configured:
        return Path(configured)
    beside = REPOSITORY.parent / "shared" / "citus" / "cluster"
    return beside if beside.exists() else Path("/work/shared/citus/cluster")


def cluster(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(cluster_script()), *arguments], capture_output=True, text=True, timeout=300)


def unavailable() -> str | None:
    """Why the cluster cannot be used here, or None."""
    script = cluster_script()
    if not os.access(script, os.X_OK):
        return f"no Citus cluster script at {script} (set {CLUSTER_VARIABLE})"
    probed = cluster("url")
    if probed.returncode != 0:
        said = probed.stderr.strip() or probed.stdout.strip()
        return f"the Citus cluster is not available ({script} url exited {probed.returncode}: {said or 'not up'})"
    return None


@pytest.fixture(scope="module")
async def citus_url() -> AsyncIterator[str]:
    """A fresh database on the cluster at our head revision, distributed; dropped afterwards."""
    reason = await asyncio.to_thread(unavailable)
    if reason is not None:
        pytest.skip(reason)
    name = f"aw_citus_claims_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    made = await asyncio.to_thread(cluster, "db", name)
    if made.returncode != 0:
        pytest.fail(f"cluster db {name} failed: {made.stderr}")
    url = made.stdout.strip()
    try:
        await asyncio.to_thread(command.upgrade, alembic_config(url), "head")
        engine = create_async_engine(resolve_database_url(url))  # no guard: the distribution spans conversations
        try:
            async with engine.connect() as connection:
                distribution = await connection.run_sync(distribute_schema, "public")
        finally:
            await engine.dispose()
        assert distribution.distributed
        admin = await asyncpg.connect(url)
        try:
            # asyncpg looks up the array types of the claim's statements on each new connection;
            # on a coordinator that query takes seconds with JIT and Citus's filter hiding shards.
            await admin.execute(f"ALTER DATABASE {name} SET jit = off")
            await admin.execute(f"ALTER DATABASE {name} SET citus.override_table_visibility = off")
        finally:
            await admin.close()
        yield url
    finally:
        await asyncio.to_thread(cluster, "dropdb", name)


@pytest.fixture
async def citus(citus_url: str) -> AsyncIterator[asyncpg.Connection]:
    """An admin connection (no guard) to the distributed database, its wake tables emptied first."""
    admin = await asyncpg.connect(citus_url)
    try:
        await admin.execute("TRUNCATE wake_fires, agent_wake_schedules")
        yield admin
    finally:
        await admin.close()


async def seed_due(admin: asyncpg.Connection, count: int, conversations: int) -> list[uuid.UUID]:
    """``count`` active schedules due before NOW, round-robin over ``conversations``; their ids, oldest first."""
    conversation_ids = [uuid.uuid4() for _ in range(conversations)]
    rows = [
        (
            conversation_ids[index % conversations],
            uuid.uuid4(),
            uuid.uuid4(),
            uuid.uuid4(),
            "interval",
            json.dumps({"seconds": 3600}),
            NOW - timedelta(seconds=count - index),
        )
        for index in range(count)
    ]
    columns = ("conversation_id", "schedule_id", "user_id", "agent_id", "schedule_type", "schedule_config")
    await admin.copy_records_to_table("agent_wake_schedules", records=rows, columns=(*columns, "next_fire_at"))
    return [row[1] for row in rows]


def an_hour_after_now(schedule: DueSchedule, now: datetime) -> datetime:
    return now + HOUR


async def due_left(admin: asyncpg.Connection) -> int:
    count: int = await admin.fetchval(
        "SELECT count(*) FROM agent_wake_schedules WHERE status = 'active' AND next_fire_at <= $1", NOW
    )
    return count


@asynccontextmanager
async def session_factories(url: str, count: int) -> AsyncIterator[list[async_sessionmaker[AsyncSession]]]:
    """``count`` session factories, each on an engine (and so connections) of its own, as separate ticks have."""
    made = [create_engine_and_session_factory(url) for _ in range(count)]
    try:
        yield [sessions for _, sessions in made]
    finally:
        for engine, _ in made:
            await engine.dispose()


async def test_eight_workers_claim_every_due_period_exactly_once(citus_url: str, citus: asyncpg.Connection) -> None:
    due = await seed_due(citus, count=2_000, conversations=300)

    async def worker(sessions: async_sessionmaker[AsyncSession]) -> list[ClaimedFire]:
        claimed: list[ClaimedFire] = []
        while True:
            async with sessions.begin() as session:
                claims = await WakeScheduleRepository(session).claim_due(NOW, limit=20, next_fire=an_hour_after_now)
            if not claims:
                return claimed
            claimed.extend(claims)

    async with session_factories(citus_url, 8) as workers:
        per_worker = await asyncio.gather(*(worker(sessions) for sessions in workers))
    claimed = [claim.schedule_id for batch in per_worker for claim in batch]
    assert sorted(claimed) == sorted(due)
    assert sum(1 for batch in per_worker if batch) > 1, "the workers did not share the work"
    fires = await citus.fetch(
        "SELECT conversation_id, schedule_id, scheduled_fire_at, count(*) AS fires FROM wake_fires GROUP BY 1, 2, 3"
    )
    assert len(fires) == len(due)
    assert Counter(row["fires"] for row in fires) == {1: len(due)}
    assert await due_left(citus) == 0


async def claim_all(
    sessions: async_sessionmaker[AsyncSession], expected: int, *, within: float = 10.0
) -> list[ClaimedFire]:
    """A tick that claims ``expected`` schedules, committed: retried (rolled back) while fewer are free,
    as they are for a moment after a killed coordinator backend, until its workers' backends end."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with sessions() as session:
            await session.begin()
            claims = await WakeScheduleRepository(session).claim_due(NOW, limit=500, next_fire=an_hour_after_now)
            if len(claims) == expected or asyncio.get_running_loop().time() > deadline:
                await session.commit()
                return claims
            await session.rollback()
        await asyncio.sleep(0.1)


async def test_a_rolled_back_claim_leaves_every_schedule_claimable(citus_url: str, citus: asyncpg.Connection) -> None:
    due = await seed_due(citus, count=60, conversations=12)
    async with session_factories(citus_url, 1) as (sessions,):
        async with sessions() as session:
            await session.begin()
            first = await WakeScheduleRepository(session).claim_due(NOW, limit=500, next_fire=an_hour_after_now)
            await session.rollback()
        assert sorted(claim.schedule_id for claim in first) == sorted(due)
        async with sessions.begin() as session:
            again = await WakeScheduleRepository(session).claim_due(NOW, limit=500, next_fire=an_hour_after_now)
    assert sorted(claim.schedule_id for claim in again) == sorted(due)
    assert await citus.fetchval("SELECT count(*) FROM wake_fires") == len(due)


async def test_a_claim_killed_before_commit_leaves_every_schedule_claimable(
    citus_url: str, citus: asyncpg.Connection
) -> None:
    due = await seed_due(citus, count=60, conversations=12)
    async with session_factories(citus_url, 2) as (doomed_sessions, rival_sessions):
        doomed = doomed_sessions()
        await doomed.begin()
        doomed_claims = await WakeScheduleRepository(doomed).claim_due(NOW, limit=500, next_fire=an_hour_after_now)
        assert sorted(claim.schedule_id for claim in doomed_claims) == sorted(due)
        driver = (await (await doomed.connection()).get_raw_connection()).driver_connection
        backend = driver.get_server_pid()

        # While the doomed tick holds the locks, a rival skips them without waiting.
        async with rival_sessions.begin() as rival:
            rival_claim = WakeScheduleRepository(rival).claim_due(NOW, limit=500, next_fire=an_hour_after_now)
            assert await asyncio.wait_for(rival_claim, timeout=30) == []

        assert await citus.fetchval("SELECT pg_terminate_backend($1::integer)", backend)
        with pytest.raises(Exception):  # noqa: B017, PT011 - the driver's error for a terminated connection
            await doomed.commit()
        await doomed.close()

        next_tick = await claim_all(rival_sessions, len(due))
    assert sorted(claim.schedule_id for claim in next_tick) == sorted(due)
    assert await citus.fetchval("SELECT count(*) FROM wake_fires") == len(due)
    assert await due_left(citus) == 0


async def test_a_schedule_whose_next_fire_raises_is_left_due_and_the_others_are_claimed(
    citus_url: str, citus: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    due = await seed_due(citus, count=40, conversations=10)
    broken = due[0]

    def next_fire(schedule: DueSchedule, now: datetime) -> datetime | None:
        if schedule.schedule_id == broken:
            raise RuntimeError("broken schedule arithmetic")
        return now + HOUR

    async with session_factories(citus_url, 1) as (sessions,), sessions.begin() as session:
        claims = await WakeScheduleRepository(session).claim_due(NOW, limit=500, next_fire=next_fire)
    assert sorted(claim.schedule_id for claim in claims) == sorted(due[1:])
    stored = await citus.fetchrow(
        "SELECT status, next_fire_at, last_fired_at FROM agent_wake_schedules WHERE schedule_id = $1", broken
    )
    assert tuple(stored) == ("active", NOW - timedelta(seconds=len(due)), None)
    assert await citus.fetchval("SELECT count(*) FROM wake_fires WHERE schedule_id = $1", broken) == 0
    assert await due_left(citus) == 1
    assert str(broken) in caplog.text


async def test_broken_schedules_that_fill_a_shards_batch_do_not_starve_a_healthy_one(
    citus_url: str, citus: asyncpg.Connection
) -> None:
    due = await seed_due(citus, count=4, conversations=1)  # one conversation: one shard
    broken, healthy = set(due[:3]), due[3]

    def next_fire(schedule: DueSchedule, now: datetime) -> datetime | None:
        if schedule.schedule_id in broken:
            raise RuntimeError("broken schedule arithmetic")
        return now + HOUR

    async with session_factories(citus_url, 1) as (sessions,), sessions.begin() as session:
        with capture_sql(session) as captured:
            claims = await WakeScheduleRepository(session).claim_due(NOW, limit=3, next_fire=next_fire)
    assert [claim.schedule_id for claim in claims] == [healthy]
    # The shard's locking SELECT again, past the schedules this tick locked and could not plan.
    assert [NAME_OF_SQL.get(statement.sql) for statement in captured].count("schedules.claim_lock_among") == 2


async def shards_reached(admin: asyncpg.Connection, statements: Sequence[CapturedStatement]) -> list[set[str]]:
    """The shards each statement reaches, as Citus logs the commands it sends to the workers: the
    statements replayed in order, with their parameters, in a transaction that is rolled back."""
    notices: list[str] = []
    admin.add_log_listener(lambda connection, message: notices.append(message.message))
    reached = []
    transaction = admin.transaction()
    await transaction.start()
    try:
        await admin.execute("SET LOCAL citus.log_remote_commands = on")
        await admin.execute("SET LOCAL client_min_messages = notice")
        for statement in statements:
            before = len(notices)
            await admin.fetch(statement.sql, *statement.parameters)
            await asyncio.sleep(0)  # the notices' callbacks
            reached.append({shard for notice in notices[before:] for shard in SHARD_TABLE.findall(notice)})
    finally:
        await transaction.rollback()
    return reached


async def test_every_statement_of_a_claim_but_the_scan_runs_on_one_shard(
    citus_url: str, citus: asyncpg.Connection
) -> None:
    await seed_due(citus, count=400, conversations=80)
    async with session_factories(citus_url, 1) as (sessions,), sessions() as session:
        await session.begin()
        with capture_sql(session) as captured:
            claims = await WakeScheduleRepository(session).claim_due(NOW, limit=100, next_fire=an_hour_after_now)
        await session.rollback()
    assert len(claims) == 100
    names = [NAME_OF_SQL[statement.sql] for statement in captured]
    # The first claim on a connection asks whether the schedules are distributed; then the scan,
    # and per shard a locking SELECT, then the fires and the reschedule of that shard's claims.
    assert names[:3] == ["schedules.citus_installed", "schedules.hash_distributed", "schedules.claim_scan_sharded"]
    shard_batches = names.count("schedules.claim_fires")
    assert shard_batches > 1, names
    assert names.count("schedules.claim_reschedule") == shard_batches

    reached = await shards_reached(citus, captured)
    shard_count = await citus.fetchval(
        "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'agent_wake_schedules'::regclass"
    )
    for name, shards in zip(names, reached, strict=True):
        if name in ("schedules.citus_installed", "schedules.hash_distributed"):
            assert shards == set(), name
        elif name == "schedules.claim_scan_sharded":
            assert len(shards) == shard_count, name
        else:
            assert len(shards) == 1, f"{name} reached shards {sorted(shards)}"

    lock = next(statement for statement in captured if NAME_OF_SQL[statement.sql] == "schedules.claim_lock_among")
    plan = "\n".join(row[0] for row in await citus.fetch(f"EXPLAIN {lock.sql}", *lock.parameters))
    assert "Task Count: 1" in plan, plan
    assert "LockRows" in plan, plan


def test_the_cluster_script_is_looked_for_beside_the_repository_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CLUSTER_VARIABLE, str(tmp_path / "cluster"))
    assert cluster_script() == tmp_path / "cluster"
    monkeypatch.delenv(CLUSTER_VARIABLE)
    beside = REPOSITORY.parent / "shared" / "citus" / "cluster"
    assert cluster_script() == (beside if beside.exists() else Path("/work/shared/citus/cluster"))
