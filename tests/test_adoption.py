"""Taking over databases built by the older runner's own DDL: in public and
in agent schemas, at each of its six steps, with rows in them."""

import asyncio
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from alembic import command
from sqlalchemy import Connection, pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from agent_wake import _catalog, _older_runner, alembic_config
from agent_wake.adoption import AdoptionRefusedError, UpgradeFailedError, adopt_schema, upgrade_schema
from agent_wake.database import resolve_database_url
from agent_wake.testing.older_runner import build_with_older_runner
from tests.conftest import ScratchDatabases
from tests.test_migrations import alembic, alembic_refused

T = TypeVar("T")

AGENT_A = "agent_" + uuid.UUID("0196a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").hex
AGENT_B = "agent_" + uuid.UUID("0196a1b2-c3d4-7e5f-8a9b-ffffffffffff").hex
ALL_TABLES = (*_older_runner.WAKE_TABLES, "conversations", "agent_skills")


async def on_connection(url: str, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    engine = create_async_engine(resolve_database_url(url), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(work, *args, **kwargs)
    finally:
        await engine.dispose()


async def execute(url: str, *statements: str) -> None:
    engine = create_async_engine(resolve_database_url(url), poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.exec_driver_sql(statement)
    finally:
        await engine.dispose()


def shapes(connection: Connection, schema: str) -> dict[str, _catalog.TableShape]:
    shape = _catalog.read_table_shapes(connection, schema, _older_runner.WAKE_TABLES)
    connection.rollback()
    return shape


def dump(connection: Connection, schema: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the five tables, as JSON, in a stable order."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for table in ALL_TABLES:
        if _catalog.read_table_shapes(connection, schema, [table]):
            result = connection.execute(text(f'SELECT to_jsonb(t) FROM "{schema}".{table} t ORDER BY 1::text'))
            rows[table] = sorted(result.scalars(), key=str)
    connection.rollback()
    return rows


def versions(connection: Connection, schema: str) -> set[str] | None:
    if not _catalog.read_table_shapes(connection, schema, ["alembic_version"]):
        connection.rollback()
        return None
    found = set(connection.execute(text(f'SELECT version_num FROM "{schema}".alembic_version')).scalars())
    connection.rollback()
    return found


def seed_rows(step: int) -> list[str]:
    """Rows the older implementation could have written by ``step``."""
    agent, conversation, user, skill = (uuid.uuid4() for _ in range(4))
    first, second, third = (uuid.uuid4() for _ in range(3))
    subscription = uuid.uuid4()
    statements = [
        "INSERT INTO conversations (agent_id, conversation_id, user_id) "
        f"VALUES ('{agent}', '{conversation}', '{user}')",
        f"INSERT INTO agent_skills (agent_id, skill_id, user_id, name) VALUES ('{agent}', '{skill}', '{user}', 'web')",
    ]
    if step >= 1:
        common = "conversation_id, user_id, agent_id"
        values = f"'{conversation}', '{user}', '{agent}'"
        statements += [
            f"INSERT INTO agent_wake_schedules ({common}, schedule_id, skill_id, schedule_type, schedule_config, "
            f"next_fire_at) VALUES ({values}, '{first}', '{skill}', 'cron', "
            """'{"expr": "0 9 * * 1", "label": "weekly"}', '2026-12-01T09:00:00Z')""",
            f"INSERT INTO agent_wake_schedules ({common}, schedule_id, schedule_type, schedule_config, "
            f"context_from_schedule_id) VALUES ({values}, '{second}', 'random_within_window', "
            """'{"start_hour": 22, "end_hour": 6, "tz": "Europe/Paris", "fires_per_day": 2}', """
            f"'{first}')",
            f"INSERT INTO agent_wake_schedules ({common}, schedule_id, schedule_type, schedule_config, status) "
            f"""VALUES ({values}, '{third}', 'relative_delay', '{{"delay": "30M"}}', 'paused')""",
        ]
    if step >= 2:
        statements += [
            "INSERT INTO wake_fires (conversation_id, fire_id, schedule_id, scheduled_fire_at, status, output_text) "
            f"VALUES ('{conversation}', '{uuid.uuid4()}', '{first}', '2026-11-{day:02d}T09:00:00Z', '{status}', "
            f"'out {day}')"
            for day, status in ((2, "fired"), (9, "skipped_busy"), (16, "failed"), (23, "fired_silent"))
        ]
    if step >= 3:
        statements += [
            "INSERT INTO webhook_subscriptions (conversation_id, subscription_id, user_id, agent_id, "
            f"secret_ciphertext) VALUES ('{conversation}', '{subscription}', '{user}', '{agent}', 'ciphertext')",
            "INSERT INTO wake_fires (conversation_id, fire_id, webhook_subscription_id, status) "
            f"VALUES ('{conversation}', '{uuid.uuid4()}', '{subscription}', 'fired')",
        ]
    if step >= 4:
        statements.append(
            "INSERT INTO wake_fires (conversation_id, fire_id, schedule_id, scheduled_fire_at, status) "
            f"VALUES ('{conversation}', '{uuid.uuid4()}', '{first}', '2026-11-30T09:00:00Z', 'dispatching')"
        )
    if step >= 6:
        statements.append(
            f"UPDATE agent_wake_schedules SET include_conversation_history = false WHERE schedule_id = '{third}'"
        )
    return statements


async def build_populated(url: str, schema: str, step: int) -> None:
    await build_with_older_runner(url, schema=schema, through_step=step)
    await execute(url, f'SET search_path TO "{schema}"', *seed_rows(step))


def read_as_apscheduler_wrote_it(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """``rows`` after revision agent_wake_0008: the older implementation's cron schedules that restrict a
    day ("0 9 * * 1" in ``seed_rows``) are marked as read with APScheduler's day-of-week numbering."""
    marked = dict(rows)
    marked["agent_wake_schedules"] = sorted(
        [
            {**row, "schedule_config": {**row["schedule_config"], "day_of_week_numbering": "apscheduler"}}
            if row["schedule_type"] == "cron"
            else row
            for row in rows.get("agent_wake_schedules", [])
        ],
        key=str,
    )
    return marked


def without_new_columns(before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]]) -> dict:
    """``after``'s rows of ``before``'s tables, cut to the columns ``before`` had (an upgrade adds
    tables and columns)."""
    cut: dict[str, list[dict[str, Any]]] = {}
    for table, rows in before.items():
        keys = rows[0].keys() if rows else ()
        cut[table] = sorted(({key: row[key] for key in keys} for row in after[table]), key=str)
    return cut


@pytest.mark.parametrize("schema", ["public", AGENT_A])
@pytest.mark.parametrize("step", range(7))
async def test_the_older_runners_ddl_builds_the_shape_of_each_step(
    scratch_databases: ScratchDatabases, step: int, schema: str
) -> None:
    url = await scratch_databases.create()
    await build_with_older_runner(url, schema=schema, through_step=step)
    live = await on_connection(url, shapes, schema)
    assert _catalog.first_difference(_older_runner.shape_after_step(step), live) is None


@pytest.mark.parametrize("step", range(1, 7))
async def test_our_revision_for_each_step_builds_that_steps_shape(
    scratch_databases: ScratchDatabases, step: int
) -> None:
    url = await scratch_databases.create()
    await asyncio.to_thread(command.upgrade, alembic_config(url, schema=AGENT_A), f"agent_wake_{step:04d}")
    live = await on_connection(url, shapes, AGENT_A)
    assert _catalog.first_difference(_older_runner.shape_after_step(step), live) is None


@pytest.mark.parametrize("schema", ["public", AGENT_A])
@pytest.mark.parametrize("step", range(1, 7))
async def test_adopting_a_populated_schema_stamps_its_step_and_upgrading_keeps_every_row(
    scratch_databases: ScratchDatabases, step: int, schema: str
) -> None:
    url = await scratch_databases.create()
    await build_populated(url, schema, step)
    before = await on_connection(url, dump, schema)

    adoption = await on_connection(url, adopt_schema, schema)

    assert (adoption.step, adoption.revision, adoption.stamped) == (step, f"agent_wake_{step:04d}", True)
    assert await on_connection(url, versions, schema) == {f"agent_wake_{step:04d}"}
    assert await on_connection(url, dump, schema) == before
    upgrade = await on_connection(url, upgrade_schema, schema)
    assert upgrade.applied == tuple(f"agent_wake_{later:04d}" for later in range(step + 1, 9))
    assert without_new_columns(before, await on_connection(url, dump, schema)) == read_as_apscheduler_wrote_it(before)
    await on_connection(url, upgrade_schema, "fresh")
    fresh = await on_connection(url, shapes, "fresh")
    assert _catalog.first_difference(fresh, await on_connection(url, shapes, schema)) is None


async def test_each_agent_schema_is_adopted_at_its_own_step_and_public_is_left_alone(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    await build_populated(url, AGENT_A, 2)
    await build_populated(url, AGENT_B, 5)
    await build_populated(url, "public", 6)
    public_before = await on_connection(url, dump, "public")

    for schema in (AGENT_A, AGENT_B):
        await on_connection(url, adopt_schema, schema)
        await on_connection(url, upgrade_schema, schema)

    assert await on_connection(url, versions, AGENT_A) == {"agent_wake_0008"}
    assert await on_connection(url, versions, AGENT_B) == {"agent_wake_0008"}
    assert await on_connection(url, versions, "public") is None
    assert await on_connection(url, dump, "public") == public_before


async def test_a_dry_run_adoption_reports_the_step_and_writes_nothing(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    await build_populated(url, AGENT_A, 3)

    adoption = await on_connection(url, adopt_schema, AGENT_A, dry_run=True)

    assert (adoption.step, adoption.stamped) == (3, False)
    assert adoption.pending[0] == "agent_wake_0004"
    assert await on_connection(url, versions, AGENT_A) is None


async def test_a_schema_without_wake_steps_is_stamped_at_the_upstream_junction(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    await build_with_older_runner(url, schema=AGENT_A, through_step=0)

    adoption = await on_connection(url, adopt_schema, AGENT_A)
    await on_connection(url, upgrade_schema, AGENT_A)

    assert adoption.revision == "agent_wake_upstream"
    live = await on_connection(url, shapes, AGENT_A)
    assert set(live) == set(_older_runner.WAKE_TABLES)


@pytest.mark.parametrize(
    ("damage", "difference"),
    [
        ("DROP INDEX idx_wake_schedules_user", "index idx_wake_schedules_user is missing"),
        ("ALTER TABLE wake_fires ALTER COLUMN display_suppressed SET DEFAULT true", "column display_suppressed is"),
        ("ALTER TABLE wake_fires ADD COLUMN extra text", "column extra exists"),
        ("CREATE INDEX idx_mine ON wake_fires (status)", "index idx_mine exists"),
        (
            "ALTER TABLE wake_fires DROP CONSTRAINT wake_fires_status_check, ADD CONSTRAINT wake_fires_status_check "
            "CHECK (status IN ('fired')) NOT VALID",
            "constraint wake_fires_status_check is",
        ),
    ],
    ids=["missing-index", "default", "extra-column", "extra-index", "check"],
)
async def test_a_schema_that_differs_from_its_step_is_refused_with_the_first_difference(
    scratch_databases: ScratchDatabases, damage: str, difference: str
) -> None:
    url = await scratch_databases.create()
    await build_populated(url, AGENT_A, 6)
    await execute(url, f'SET search_path TO "{AGENT_A}"', damage)

    with pytest.raises(AdoptionRefusedError, match="its ledger says step 6, but .*" + difference):
        await on_connection(url, adopt_schema, AGENT_A)
    assert await on_connection(url, versions, AGENT_A) is None


async def test_two_fires_of_one_period_are_refused_before_the_unique_index_needs_them_gone(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    await build_populated(url, AGENT_A, 4)
    await execute(
        url,
        f'SET search_path TO "{AGENT_A}"',
        "INSERT INTO wake_fires (conversation_id, fire_id, schedule_id, scheduled_fire_at, status) "
        "SELECT conversation_id, gen_random_uuid(), schedule_id, scheduled_fire_at, 'failed' "
        "FROM wake_fires WHERE status = 'fired' AND schedule_id IS NOT NULL",
    )

    with pytest.raises(AdoptionRefusedError, match="1 schedule periods have more than one fire"):
        await on_connection(url, adopt_schema, AGENT_A)
    assert await on_connection(url, versions, AGENT_A) is None


async def test_a_ledger_whose_description_is_not_the_runners_is_refused(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    await build_populated(url, AGENT_A, 3)
    await execute(
        url,
        f"UPDATE \"{AGENT_A}\"._schema_migrations SET description = 'something_else' "
        "WHERE package = 'agent_wake' AND version = 2",
    )

    with pytest.raises(AdoptionRefusedError, match="the ledger's step 2 is 'something_else'"):
        await on_connection(url, adopt_schema, AGENT_A)


async def test_an_adopted_schema_is_refused_a_second_adoption(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    await build_populated(url, AGENT_A, 6)
    await on_connection(url, adopt_schema, AGENT_A)

    with pytest.raises(AdoptionRefusedError, match="already has agent-wake's alembic_version"):
        await on_connection(url, adopt_schema, AGENT_A)


async def test_upgrading_a_runner_schema_that_is_not_adopted_is_refused_before_any_table_is_made(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    await build_populated(url, AGENT_A, 6)
    before = await on_connection(url, shapes, AGENT_A)

    with pytest.raises(AdoptionRefusedError, match="adopt"):
        await on_connection(url, upgrade_schema, AGENT_A)
    assert await on_connection(url, shapes, AGENT_A) == before
    assert await on_connection(url, versions, AGENT_A) is None


async def test_a_failed_revision_names_where_the_schema_stopped_and_a_rerun_resumes(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    await build_populated(url, AGENT_A, 5)
    await on_connection(url, adopt_schema, AGENT_A)
    # Revision 0006 adds this column: a pre-existing one makes it fail.
    blocker = f'ALTER TABLE "{AGENT_A}".agent_wake_schedules ADD COLUMN include_conversation_history text'
    await execute(url, blocker)

    with pytest.raises(UpgradeFailedError) as failure:
        await on_connection(url, upgrade_schema, AGENT_A)

    assert (failure.value.reached, failure.value.failed) == (("agent_wake_0005",), "agent_wake_0006")
    assert "run the same command again" in str(failure.value)
    await execute(url, f'ALTER TABLE "{AGENT_A}".agent_wake_schedules DROP COLUMN include_conversation_history')
    resumed = await on_connection(url, upgrade_schema, AGENT_A)
    assert resumed.before == ("agent_wake_0005",)
    assert "agent_wake_0006" in resumed.applied


async def test_adoption_waits_for_the_older_runners_lock_on_the_schema(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    await build_populated(url, AGENT_A, 6)
    engine = create_async_engine(resolve_database_url(url), poolclass=pool.NullPool)
    try:
        async with engine.connect() as runner:
            lock = {"namespace": _older_runner.LOCK_NAMESPACE, "key": _older_runner.lock_key(AGENT_A)}
            await runner.execute(text("SELECT pg_advisory_lock(:namespace, :key)"), lock)
            await runner.commit()
            adoption = asyncio.create_task(on_connection(url, adopt_schema, AGENT_A))
            await asyncio.sleep(1.0)
            assert not adoption.done()
            await runner.execute(text("SELECT pg_advisory_unlock(:namespace, :key)"), lock)
            await runner.commit()
            assert (await asyncio.wait_for(adoption, 30)).stamped
    finally:
        await engine.dispose()


def test_the_lock_key_is_the_runners_sha256_prefix() -> None:
    # sha256(b"public") begins efa1f375 (worked out with sha256sum); masked to 31 bits.
    assert _older_runner.lock_key("public") == 0xEFA1F375 & 0x7FFFFFFF


async def test_plain_alembic_upgrade_on_a_runner_schema_says_to_adopt_it_in_one_line(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    await build_populated(url, "public", 4)

    refused = alembic_refused("upgrade", "head", url=url)

    assert "FAILED: schema public was built by the older migration runner" in refused
    assert "agent-wake adopt --schemas public" in refused
    assert "agent_wake_0004" in refused
    assert "Traceback" not in refused


async def test_a_host_history_reaching_our_first_revision_on_a_runner_schema_is_told_to_adopt_it(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    await build_populated(url, "public", 6)
    # A host's history provides the upstream tables: only our branch would run.
    alembic("stamp", "agent_wake_upstream", url=url)

    refused = alembic_refused("upgrade", "head", url=url)

    assert "FAILED: schema public was built by the older migration runner" in refused
    assert "agent_wake_0006" in refused


def runner_lock_is_free(connection: Connection, schema: str) -> bool:
    key = {"namespace": _older_runner.LOCK_NAMESPACE, "key": _older_runner.lock_key(schema)}
    taken = connection.execute(text("SELECT pg_try_advisory_lock(:namespace, :key)"), key).scalar_one()
    if taken:
        connection.execute(text("SELECT pg_advisory_unlock(:namespace, :key)"), key)
    connection.commit()
    return bool(taken)


async def test_a_refused_adoption_releases_the_runners_lock_on_a_connection_that_stays_open(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    await build_populated(url, AGENT_A, 6)
    await on_connection(url, adopt_schema, AGENT_A)
    engine = create_async_engine(resolve_database_url(url), poolclass=pool.NullPool)
    try:
        async with engine.connect() as kept_open:
            with pytest.raises(AdoptionRefusedError):
                await kept_open.run_sync(adopt_schema, AGENT_A)
            assert await on_connection(url, runner_lock_is_free, AGENT_A)
    finally:
        await engine.dispose()


async def test_fires_of_one_schedule_without_a_period_do_not_count_as_duplicates(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    await build_populated(url, AGENT_A, 6)
    await execute(
        url,
        f'SET search_path TO "{AGENT_A}"',
        "INSERT INTO wake_fires (conversation_id, fire_id, schedule_id, status) "
        "SELECT conversation_id, gen_random_uuid(), schedule_id, 'failed' "
        "FROM agent_wake_schedules, generate_series(1, 2) LIMIT 2",
    )

    assert (await on_connection(url, adopt_schema, AGENT_A)).stamped
    assert (await on_connection(url, upgrade_schema, AGENT_A)).applied == ("agent_wake_0007", "agent_wake_0008")


async def test_a_revision_that_fails_after_its_first_commit_is_reported_as_partly_applied_and_resumes(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    await build_populated(url, AGENT_A, 2)
    await on_connection(url, adopt_schema, AGENT_A)
    # Step 3 validates its new foreign key after a commit: a fire naming no subscription fails it.
    await execute(
        url,
        f'SET search_path TO "{AGENT_A}"',
        "INSERT INTO wake_fires (conversation_id, fire_id, webhook_subscription_id, status) "
        "VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'fired')",
    )

    with pytest.raises(UpgradeFailedError) as failure:
        await on_connection(url, upgrade_schema, AGENT_A)

    assert (failure.value.reached, failure.value.failed) == (("agent_wake_0002",), "agent_wake_0003")
    assert "may have committed its first part" in str(failure.value)
    await execute(url, f'UPDATE "{AGENT_A}".wake_fires SET webhook_subscription_id = NULL')
    resumed = await on_connection(url, upgrade_schema, AGENT_A)
    assert resumed.applied[0] == "agent_wake_0003"
    live = await on_connection(url, shapes, AGENT_A)
    await on_connection(url, upgrade_schema, "fresh")
    assert _catalog.first_difference(await on_connection(url, shapes, "fresh"), live) is None


def ledger(connection: Connection, schema: str) -> list[tuple[int, str]]:
    rows = connection.execute(
        text(
            f'SELECT version, description FROM "{schema}"._schema_migrations '
            "WHERE package = 'agent_wake' ORDER BY version"
        )
    )
    found = [(version, description) for version, description in rows]
    connection.rollback()
    return found


async def test_an_upgrade_records_the_runners_six_steps_in_its_ledger(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    await build_populated(url, AGENT_A, 3)
    await on_connection(url, adopt_schema, AGENT_A)
    assert len(await on_connection(url, ledger, AGENT_A)) == 3

    await on_connection(url, upgrade_schema, AGENT_A)

    assert await on_connection(url, ledger, AGENT_A) == [
        (1, "create_agent_wake_schedules"),
        (2, "create_wake_fires"),
        (3, "create_webhook_subscriptions"),
        (4, "add_dispatching_status"),
        (5, "open_verification_scheme_check"),
        (6, "add_include_conversation_history"),
    ]
