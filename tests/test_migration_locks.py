"""The revisions on live, populated tables: writers keep writing while they
run, a revision that cannot get its lock gives up at its lock_timeout (5 s,
fixed in the revisions) instead of making every writer queue behind it,
and a failed run is finished by running the upgrade again, under our
env.py (a transaction per revision) and under a host's (Alembic's
template: one transaction for the whole run) alike."""

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from agent_wake import alembic_config
from tests.conftest import ScratchDatabases
from tests.host_project import write_host_project
from tests.test_migrations import REPO, alembic, alembic_refused, versions

LOCK_TIMEOUT = 5.0
# What a write or a refusal may take beyond the lock timeout on a shared machine.
MARGIN = 1.5


@dataclass
class History:
    """Where `alembic` runs: our checkout, whose env.py commits each
    revision on its own, or a host project, whose env.py (Alembic's
    template) runs the whole upgrade in one transaction and reads `-x url=`."""

    folder: Path
    host: bool

    @property
    def heads(self) -> str:
        return "heads" if self.host else "head"

    def arguments(self, url: str, *command: str) -> list[str]:
        return ["-x", f"url={url}", *command] if self.host else list(command)

    def upgrade(self, url: str, target: str) -> None:
        alembic(*self.arguments(url, "upgrade", target), url=url, cwd=self.folder)

    def upgrade_refused(self, url: str, target: str) -> str:
        return alembic_refused(*self.arguments(url, "upgrade", target), url=url, cwd=self.folder)

    async def start_upgrade(self, url: str, target: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "alembic",
            *self.arguments(url, "upgrade", target),
            cwd=self.folder,
            env={**os.environ, "AGENT_WAKE_DATABASE_URL": url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )


def history(kind: str, folder: Path) -> History:
    if kind == "host":
        write_host_project(folder)
        return History(folder, host=True)
    return History(REPO, host=False)


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[AsyncConnection]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            yield connection
    finally:
        await engine.dispose()


async def execute(url: str, *statements: str) -> None:
    async with connected(url) as connection:
        for statement in statements:
            await connection.execute(text(statement))
        await connection.commit()


async def add_schedules_and_fires(
    url: str, schedules: int, fires_per_schedule: int
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Schedules of as many conversations, each with its fires (one per
    minute back from now); returns their (conversation_id, schedule_id)."""
    async with connected(url) as connection:
        rows = await connection.execute(
            text(
                "INSERT INTO agent_wake_schedules (conversation_id, schedule_id, user_id, agent_id, schedule_type) "
                "SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'cron' "
                "FROM generate_series(1, :schedules) RETURNING conversation_id, schedule_id"
            ),
            {"schedules": schedules},
        )
        pairs = [(conversation_id, schedule_id) for conversation_id, schedule_id in rows]
        await connection.execute(
            text(
                "INSERT INTO wake_fires (conversation_id, fire_id, schedule_id, scheduled_fire_at, status) "
                "SELECT s.conversation_id, gen_random_uuid(), s.schedule_id, now() - g * interval '1 minute', 'fired' "
                "FROM agent_wake_schedules s CROSS JOIN generate_series(1, :fires) g"
            ),
            {"fires": fires_per_schedule},
        )
        await connection.commit()
    return pairs


INSERT_FIRE = text(
    "INSERT INTO wake_fires (conversation_id, fire_id, schedule_id, scheduled_fire_at, status) "
    "VALUES (:conversation_id, gen_random_uuid(), :schedule_id, clock_timestamp(), 'fired')"
)
TOUCH_SCHEDULE = text(
    "UPDATE agent_wake_schedules SET next_fire_at = clock_timestamp() "
    "WHERE conversation_id = :conversation_id AND schedule_id = :schedule_id"
)


async def write_until(
    stop: asyncio.Event, url: str, schedules: list[tuple[uuid.UUID, uuid.UUID]]
) -> list[tuple[float, float]]:
    """Insert a fire, then touch a schedule, and again, each write its own
    transaction, until ``stop``; returns each write's (start, end) in
    ``time.monotonic()`` seconds."""
    writes: list[tuple[float, float]] = []
    engine = create_async_engine(url)
    try:
        while not stop.is_set():
            conversation_id, schedule_id = schedules[len(writes) % len(schedules)]
            started = time.monotonic()
            async with engine.begin() as connection:
                statement = TOUCH_SCHEDULE if len(writes) % 2 else INSERT_FIRE
                await connection.execute(statement, {"conversation_id": conversation_id, "schedule_id": schedule_id})
            writes.append((started, time.monotonic()))
            await asyncio.sleep(0.005)  # the machine is shared
    finally:
        await engine.dispose()
    return writes


async def timed_write(connection: AsyncConnection, conversation_id: uuid.UUID, schedule_id: uuid.UUID) -> float:
    """Insert a fire and commit; returns how long that took, in seconds."""
    started = time.monotonic()
    await connection.execute(INSERT_FIRE, {"conversation_id": conversation_id, "schedule_id": schedule_id})
    await connection.commit()
    return time.monotonic() - started


async def catalog(url: str) -> dict[str, object]:
    """Constraints (definition, validated), indexes (definition, valid) and
    columns of the public schema, as PostgreSQL prints them."""
    async with connected(url) as connection:
        constraints = await connection.execute(
            text(
                "SELECT rel.relname, con.conname, pg_get_constraintdef(con.oid), con.convalidated "
                "FROM pg_constraint con JOIN pg_class rel ON rel.oid = con.conrelid "
                "WHERE rel.relnamespace = 'public'::regnamespace"
            )
        )
        indexes = await connection.execute(
            text(
                "SELECT pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = 'public'::regnamespace"
            )
        )
        columns = await connection.execute(
            text(
                "SELECT table_name, column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = 'public'"
            )
        )
        return {
            "constraints": {tuple(row) for row in constraints},
            "indexes": {tuple(row) for row in indexes},
            "columns": {tuple(row) for row in columns},
        }


async def fresh_catalog(scratch_databases: ScratchDatabases, where: History) -> dict[str, object]:
    url = await scratch_databases.create()
    where.upgrade(url, where.heads)
    return await catalog(url)


async def wait_for_lock_request(connection: AsyncConnection, table: str, mode: str, *, present: bool) -> float:
    """Poll pg_locks until a request for ``mode`` on ``table`` is waiting
    (``present``) or no longer is; returns when, in ``time.monotonic()`` seconds."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        waiting = await connection.execute(
            text("SELECT count(*) FROM pg_locks WHERE relation = to_regclass(:table) AND mode = :mode AND NOT granted"),
            {"table": table, "mode": mode},
        )
        if (waiting.scalar_one() > 0) == present:
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {mode} request on {table} {'appeared' if present else 'went away'} within 60 s")


async def test_writers_keep_writing_while_a_populated_database_is_upgraded_from_step_two_to_head(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    alembic("upgrade", "agent_wake_0002", url=url)
    schedules = await add_schedules_and_fires(url, schedules=200, fires_per_schedule=500)
    stop = asyncio.Event()
    writer = asyncio.create_task(write_until(stop, url, schedules))
    await asyncio.sleep(0.5)
    began = time.monotonic()
    await asyncio.to_thread(command.upgrade, alembic_config(url), "head")
    ended = time.monotonic()
    stop.set()
    writes = await writer

    assert await versions(url) == {"agent_wake_0008"}
    during = [end - start for start, end in writes if start < ended and end > began]
    assert len(during) >= 10, f"the writer made {len(during)} writes in the {ended - began:.1f} s of the upgrade"
    slowest = max(end - start for start, end in writes)
    assert slowest < LOCK_TIMEOUT + MARGIN, f"a write waited {slowest:.2f} s"


# Under the host's one transaction, agent_wake_0003 has committed (before
# its VALIDATE) but its version row goes with step 4's rollback: the rerun
# resumes it.
@pytest.mark.parametrize(
    ("kind", "left_at"),
    [("ours", "agent_wake_0003"), ("host", "agent_wake_0002")],
    ids=["transaction_per_revision", "host_one_transaction"],
)
async def test_a_revision_that_cannot_get_its_lock_gives_up_at_the_lock_timeout_and_a_rerun_finishes(
    scratch_databases: ScratchDatabases, tmp_path: Path, kind: str, left_at: str
) -> None:
    where = history(kind, tmp_path)
    url = await scratch_databases.create()
    where.upgrade(url, "agent_wake_0002")
    schedules = await add_schedules_and_fires(url, schedules=10, fires_per_schedule=10)
    conversation_id, schedule_id = schedules[0]
    async with connected(url) as blocker, connected(url) as writer, connected(url) as monitor:
        # An open transaction that has read wake_fires holds ACCESS SHARE,
        # which step 4's ACCESS EXCLUSIVE must wait for.
        await blocker.execute(text("SELECT count(*) FROM wake_fires"))
        migration = await where.start_upgrade(url, where.heads)
        queued = await wait_for_lock_request(monitor, "wake_fires", "AccessExclusiveLock", present=True)

        # A write queues behind the waiting request, until the revision gives up.
        write = asyncio.create_task(timed_write(writer, conversation_id, schedule_id))
        await wait_for_lock_request(monitor, "wake_fires", "RowExclusiveLock", present=True)
        gave_up = await wait_for_lock_request(monitor, "wake_fires", "AccessExclusiveLock", present=False)
        write_waited = await write
        output = (await migration.communicate())[0].decode()
        assert migration.returncode != 0
        assert "canceling statement due to lock timeout" in output
        assert LOCK_TIMEOUT - 0.5 < gave_up - queued < LOCK_TIMEOUT + MARGIN
        assert write_waited < LOCK_TIMEOUT + MARGIN
        await blocker.rollback()

    assert await versions(url) == {left_at}
    where.upgrade(url, where.heads)
    assert await versions(url) == {"agent_wake_0008"}
    assert await catalog(url) == await fresh_catalog(scratch_databases, where)


@pytest.mark.parametrize("kind", ["ours", "host"], ids=["transaction_per_revision", "host_one_transaction"])
async def test_step_three_resumes_at_validate_after_a_fire_naming_no_subscription_failed_it(
    scratch_databases: ScratchDatabases, tmp_path: Path, kind: str
) -> None:
    where = history(kind, tmp_path)
    url = await scratch_databases.create()
    where.upgrade(url, "agent_wake_0002")
    await add_schedules_and_fires(url, schedules=10, fires_per_schedule=10)
    await execute(
        url,
        "INSERT INTO wake_fires (conversation_id, fire_id, webhook_subscription_id, status) "
        "VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'fired')",
    )

    refused = where.upgrade_refused(url, where.heads)
    assert 'violates foreign key constraint "wake_fires_webhook_subscription_fk"' in refused
    assert await versions(url) == {"agent_wake_0002"}  # step 1 of agent_wake_0003 is committed, but not recorded
    async with connected(url) as connection:
        validated = await connection.execute(
            text("SELECT convalidated FROM pg_constraint WHERE conname = 'wake_fires_webhook_subscription_fk'")
        )
        assert validated.scalar_one() is False

    await execute(url, "UPDATE wake_fires SET webhook_subscription_id = NULL")
    where.upgrade(url, where.heads)
    assert await versions(url) == {"agent_wake_0008"}
    assert await catalog(url) == await fresh_catalog(scratch_databases, where)


class Index(NamedTuple):
    oid: int
    valid: bool
    unique: bool


async def index(url: str, name: str) -> Index:
    async with connected(url) as connection:
        row = await connection.execute(
            text("SELECT indexrelid::int, indisvalid, indisunique FROM pg_index WHERE indexrelid = to_regclass(:name)"),
            {"name": name},
        )
        return Index(*row.one())


async def test_step_seven_resumes_after_its_unique_build_failed_on_a_duplicate(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    alembic("upgrade", "agent_wake_0006", url=url)
    await add_schedules_and_fires(url, schedules=10, fires_per_schedule=10)
    duplicate = uuid.uuid4()
    await execute(
        url,
        f"INSERT INTO wake_fires (conversation_id, fire_id, schedule_id, scheduled_fire_at, status) "
        f"SELECT conversation_id, '{duplicate}', schedule_id, scheduled_fire_at, 'failed' FROM wake_fires LIMIT 1",
    )

    refused = alembic_refused("upgrade", "head", url=url)
    assert 'could not create unique index "idx_wake_fires_schedule_period"' in refused
    assert not (await index(url, "idx_wake_fires_schedule_period")).valid  # PostgreSQL leaves it INVALID

    await execute(url, f"DELETE FROM wake_fires WHERE fire_id = '{duplicate}'")
    alembic("upgrade", "head", url=url)
    rebuilt = await index(url, "idx_wake_fires_schedule_period")
    assert (rebuilt.valid, rebuilt.unique) == (True, True)
    assert await versions(url) == {"agent_wake_0008"}


async def test_step_seven_keeps_a_valid_index_and_rebuilds_an_invalid_one(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    alembic("upgrade", "agent_wake_0006", url=url)
    schedules = await add_schedules_and_fires(url, schedules=10, fires_per_schedule=10)
    # What a run leaves when its second build gives up at lock_timeout
    # (here, waiting for a writer's open transaction): the first index
    # valid, the second INVALID.
    await execute(
        url,
        "CREATE UNIQUE INDEX idx_wake_fires_schedule_period "
        "ON wake_fires (conversation_id, schedule_id, scheduled_fire_at) WHERE schedule_id IS NOT NULL",
    )
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with connected(url) as writer, engine.connect() as builder:
            conversation_id, schedule_id = schedules[0]
            await writer.execute(INSERT_FIRE, {"conversation_id": conversation_id, "schedule_id": schedule_id})
            await builder.execute(text("SET lock_timeout = '100ms'"))
            with pytest.raises(Exception, match="lock timeout"):
                await builder.execute(
                    text(
                        "CREATE INDEX CONCURRENTLY idx_wake_fires_dispatching "
                        "ON wake_fires (actual_fired_at) WHERE status = 'dispatching'"
                    )
                )
            await writer.rollback()
    finally:
        await engine.dispose()
    kept = await index(url, "idx_wake_fires_schedule_period")
    leftover = await index(url, "idx_wake_fires_dispatching")
    assert not leftover.valid

    alembic("upgrade", "head", url=url)
    assert await index(url, "idx_wake_fires_schedule_period") == kept  # the same index, not built again
    rebuilt = await index(url, "idx_wake_fires_dispatching")
    assert rebuilt.oid != leftover.oid
    assert rebuilt.valid


def test_offline_sql_validates_each_constraint_in_a_transaction_after_the_one_that_added_it() -> None:
    script = alembic(
        "upgrade", "agent_wake_0002:agent_wake_0005", "--sql", url="postgresql://nobody@invalid.invalid/none"
    )
    statements = [statement.strip() for statement in script.stdout.split(";\n") if statement.strip()]
    for table, constraint in [
        ("wake_fires", "wake_fires_webhook_subscription_fk"),
        ("wake_fires", "wake_fires_status_check"),
        ("webhook_subscriptions", "webhook_subscriptions_verification_scheme_check"),
    ]:
        (added,) = [
            i
            for i, statement in enumerate(statements)
            if statement.startswith(f"ALTER TABLE {table} ADD CONSTRAINT {constraint} ")
        ]
        assert statements[added].endswith(" NOT VALID")
        assert statements[added + 1 : added + 5] == [
            "COMMIT",
            "SET lock_timeout = '5s'",
            f"ALTER TABLE {table} VALIDATE CONSTRAINT {constraint}",
            "RESET lock_timeout",
        ]
