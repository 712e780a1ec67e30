"""The partition guard refuses statements on the wake tables that are not
confined to given conversations, whoever wrote them, before they run."""

import asyncio
import logging
import uuid
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import Connection, create_engine, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from agent_wake import (
    AgentWakeError,
    InvalidInputError,
    PartitionScopeError,
    PartitionSpan,
    WakeFire,
    WakeSchedule,
    install_partition_guard,
    spans_partitions,
)
from agent_wake.testing.factories import WakeFactory

CONVERSATION = "00000000-0000-0000-0000-00000000000a"
OTHER = "00000000-0000-0000-0000-00000000000b"


@pytest.fixture
async def connection(wake_session: AsyncSession) -> AsyncConnection:
    """The connection under ``wake_session``: guarded, and rolled back after the test."""
    return await wake_session.connection()


async def refused(connection: AsyncConnection, sql: str) -> PartitionScopeError:
    with pytest.raises(PartitionScopeError) as caught:
        await connection.execute(text(sql))
    return caught.value


# Each statement would fail in PostgreSQL if it were sent (1/0 or a missing
# table), so a PartitionScopeError also shows that nothing was executed.
UNSCOPED = {
    "bare select": "SELECT 1/0 FROM agent_wake_schedules",
    "scoped with or": f"SELECT 1/0 FROM wake_fires WHERE conversation_id = '{CONVERSATION}' OR true",
    "or inside and": (
        f"SELECT 1/0 FROM wake_fires WHERE status = 'fired' AND "
        f"(conversation_id = '{CONVERSATION}' OR conversation_id IS NOT NULL)"
    ),
    "unscoped subquery": (
        f"SELECT 1/0 FROM agent_wake_schedules s WHERE s.conversation_id = '{CONVERSATION}' "
        "AND EXISTS (SELECT 1 FROM wake_fires f WHERE f.schedule_id = s.schedule_id)"
    ),
    "subquery in from": (f"SELECT 1/0 FROM (SELECT * FROM wake_fires) f WHERE f.conversation_id = '{CONVERSATION}'"),
    "join with one side scoped": (
        "SELECT 1/0 FROM agent_wake_schedules s JOIN wake_fires f ON f.schedule_id = s.schedule_id "
        f"WHERE s.conversation_id = '{CONVERSATION}'"
    ),
    "join scoped only in on": (
        "SELECT 1/0 FROM agent_wake_schedules s JOIN wake_fires f "
        f"ON f.conversation_id = '{CONVERSATION}' WHERE s.conversation_id = '{CONVERSATION}'"
    ),
    "cte": (
        "WITH all_fires AS (SELECT * FROM wake_fires) "
        f"SELECT 1/0 FROM all_fires WHERE conversation_id = '{CONVERSATION}'"
    ),
    "union": (
        f"SELECT 1/0 FROM wake_fires WHERE conversation_id = '{CONVERSATION}' UNION ALL SELECT 1/0 FROM wake_fires"
    ),
    "update from": (
        "UPDATE agent_wake_schedules s SET name = 'x' FROM wake_fires f "
        f"WHERE s.conversation_id = '{CONVERSATION}' AND f.schedule_id = s.schedule_id AND 1/0 = 1"
    ),
    "delete using": (
        "DELETE FROM wake_fires f USING agent_wake_schedules s "
        f"WHERE f.conversation_id = '{CONVERSATION}' AND s.schedule_id = f.schedule_id AND 1/0 = 1"
    ),
    "wrong table's conversation_id": (
        "SELECT 1/0 FROM agent_wake_schedules s, wake_fires f "
        f"WHERE s.conversation_id = '{CONVERSATION}' AND s.conversation_id = f.conversation_id"
    ),
    "compared to a column": "SELECT 1/0 FROM wake_fires WHERE conversation_id = conversation_id",
    "in a subquery": (
        "SELECT 1/0 FROM wake_fires WHERE conversation_id IN (SELECT conversation_id FROM conversations)"
    ),
    "any of a subquery": (
        "SELECT 1/0 FROM wake_fires WHERE conversation_id = ANY(SELECT conversation_id FROM conversations)"
    ),
    "not equal": f"SELECT 1/0 FROM wake_fires WHERE conversation_id <> '{CONVERSATION}'",
    "quoted name": 'SELECT 1/0 FROM "wake_fires"',
    "schema-qualified name": "SELECT 1/0 FROM public.webhook_subscriptions",
    "unicode-escaped name": 'SELECT 1/0 FROM U&"wake\\005ffires"',
    "update without where": "UPDATE webhook_subscriptions SET name = 'x' WHERE 1/0 = 1",
    "delete without where": "DELETE FROM wake_fires WHERE 1/0 = 1",
    "insert without conversation_id": (
        "INSERT INTO wake_fires (fire_id, status) SELECT gen_random_uuid(), 'fired' WHERE 1/0 = 1"
    ),
    "insert select from another partition": (
        "INSERT INTO wake_fires (conversation_id, fire_id, status) "
        "SELECT conversation_id, gen_random_uuid(), 'fired' FROM wake_fires WHERE 1/0 = 1"
    ),
    "upsert rewriting conversation_id": (
        f"INSERT INTO wake_fires (conversation_id, fire_id, status) VALUES ('{CONVERSATION}', "
        f"'{OTHER}', 'fired') ON CONFLICT (fire_id) DO UPDATE SET conversation_id = excluded.conversation_id"
    ),
    "update moving a row": (
        f"UPDATE wake_fires SET conversation_id = '{OTHER}' WHERE conversation_id = '{CONVERSATION}'"
    ),
    "column aliases renaming conversation_id": (
        "SELECT 1/0 FROM wake_fires AS w(c0, c1, c2, c3, c4, c5, conversation_id) WHERE w.conversation_id = 'fired'"
    ),
    "column aliases in a subquery": (
        f"SELECT 1/0 FROM wake_fires w WHERE w.conversation_id = '{CONVERSATION}' AND EXISTS "
        f"(SELECT 1 FROM wake_fires AS f(x) WHERE conversation_id = '{CONVERSATION}')"
    ),
    "tablesample": "SELECT 1/0 FROM wake_fires TABLESAMPLE SYSTEM (100)",
    "tablesample in update from": (
        "UPDATE agent_wake_schedules s SET name = 'x' FROM wake_fires f TABLESAMPLE SYSTEM (100) "
        f"WHERE s.conversation_id = '{CONVERSATION}' AND 1/0 = 1"
    ),
    "merge": "MERGE INTO wake_fires w USING (SELECT 1) s ON 1/0 = 1 WHEN MATCHED THEN DELETE",
    "explain analyze merge": (
        "EXPLAIN ANALYZE MERGE INTO wake_fires w USING (SELECT 1) s ON 1/0 = 1 WHEN MATCHED THEN UPDATE SET error = 'x'"
    ),
    "prepared merge": (
        "PREPARE guard_probe AS MERGE INTO wake_fires w USING (SELECT 1) s ON true WHEN MATCHED THEN DELETE"
    ),
    "upsert on an id-only target": (
        f"INSERT INTO wake_fires (conversation_id, fire_id, status) VALUES ('{CONVERSATION}', '{OTHER}', 'fired') "
        "ON CONFLICT (fire_id) DO UPDATE SET output_text = 'overwritten' WHERE 1/0 = 1"
    ),
    "upsert on the id constraint": (
        f"INSERT INTO webhook_subscriptions (conversation_id, subscription_id, user_id, agent_id, "
        f"secret_ciphertext) VALUES ('{CONVERSATION}', '{OTHER}', '{OTHER}', '{OTHER}', '') "
        "ON CONFLICT ON CONSTRAINT webhook_subscriptions_subscription_id_key DO UPDATE SET name = 'x' "
        "WHERE 1/0 = 1"
    ),
    "do block building the name": "DO $$BEGIN EXECUTE 'DELETE FROM wake' || '_fires'; END$$",
    "query_to_xml": "SELECT query_to_xml('SELECT 1/0 FROM wake_fires', true, false, '')",
    "table_to_xml by oid": (
        "SELECT table_to_xml(c.oid::regclass, true, false, '') FROM pg_class c "
        "WHERE relname = 'wake' || '_fires' AND 1/0 = 1"
    ),
    "truncate": "TRUNCATE wake_fires",
    "explain analyze": "EXPLAIN ANALYZE SELECT 1/0 FROM wake_fires",
    "copy": "COPY wake_fires TO STDOUT",
    "second statement": (
        f"SELECT 1 FROM wake_fires WHERE conversation_id = '{CONVERSATION}'; SELECT 1/0 FROM wake_fires"
    ),
}


@pytest.mark.parametrize("sql", UNSCOPED.values(), ids=UNSCOPED.keys())
async def test_unscoped_text_statements_are_refused(connection: AsyncConnection, sql: str) -> None:
    error = await refused(connection, sql)
    # "(any)": a DO block or a SQL-running function, whose table cannot be known.
    assert error.table in {"agent_wake_schedules", "wake_fires", "webhook_subscriptions", "(any)"}
    assert error.sql == sql
    assert sql in str(error)


SCOPED = {
    "equal to a constant": f"SELECT 1 FROM agent_wake_schedules WHERE conversation_id = '{CONVERSATION}'",
    "equal to a bind": "SELECT 1 FROM wake_fires WHERE conversation_id = $1",
    "value on the left": f"SELECT 1 FROM wake_fires WHERE '{CONVERSATION}'::uuid = conversation_id",
    "in values": f"SELECT 1 FROM wake_fires WHERE conversation_id IN ('{CONVERSATION}', '{OTHER}')",
    "any array": f"SELECT 1 FROM wake_fires WHERE conversation_id = ANY(ARRAY['{CONVERSATION}'::uuid])",
    "or beside the pin": (
        f"SELECT 1 FROM wake_fires WHERE conversation_id = '{CONVERSATION}' AND (status = 'fired' OR true)"
    ),
    "both subquery levels": (
        f"SELECT 1 FROM agent_wake_schedules s WHERE s.conversation_id = '{CONVERSATION}' AND EXISTS "
        f"(SELECT 1 FROM wake_fires f WHERE f.conversation_id = '{CONVERSATION}' "
        "AND f.schedule_id = s.schedule_id)"
    ),
    "subquery in from": (f"SELECT 1 FROM (SELECT * FROM wake_fires WHERE conversation_id = '{CONVERSATION}') f"),
    "join with both sides": (
        "SELECT 1 FROM agent_wake_schedules s JOIN wake_fires f ON f.schedule_id = s.schedule_id "
        f"WHERE s.conversation_id = '{CONVERSATION}' AND f.conversation_id = '{CONVERSATION}'"
    ),
    "cte": (f"WITH mine AS (SELECT * FROM wake_fires WHERE conversation_id = '{CONVERSATION}') SELECT 1 FROM mine"),
    "update from": (
        "UPDATE agent_wake_schedules s SET name = 'x' FROM wake_fires f "
        f"WHERE s.conversation_id = '{CONVERSATION}' AND f.conversation_id = '{CONVERSATION}' "
        "AND f.schedule_id = s.schedule_id"
    ),
    "delete using": (
        "DELETE FROM wake_fires f USING agent_wake_schedules s "
        f"WHERE f.conversation_id = '{CONVERSATION}' AND s.conversation_id = '{CONVERSATION}' "
        "AND s.schedule_id = f.schedule_id"
    ),
    "quoted and schema-qualified": (f"SELECT 1 FROM public.\"wake_fires\" WHERE conversation_id = '{CONVERSATION}'"),
    "other tables": "SELECT count(*) FROM conversations",
    "upsert on the partitioned key": (
        f"INSERT INTO wake_fires (conversation_id, fire_id, status) VALUES ('{CONVERSATION}', '{OTHER}', 'fired') "
        "ON CONFLICT (conversation_id, fire_id) DO UPDATE SET output_text = 'retried'"
    ),
    "upsert doing nothing": (
        f"INSERT INTO wake_fires (conversation_id, fire_id, status) VALUES ('{CONVERSATION}', '{OTHER}', 'fired') "
        "ON CONFLICT DO NOTHING"
    ),
    "table alias without column names": f"SELECT 1 FROM wake_fires AS w WHERE w.conversation_id = '{CONVERSATION}'",
    "ddl": "COMMENT ON TABLE wake_fires IS 'one row per fire'",
}


@pytest.mark.parametrize("sql", SCOPED.values(), ids=SCOPED.keys())
async def test_scoped_text_statements_pass(connection: AsyncConnection, sql: str) -> None:
    parameters = (CONVERSATION,) if "$1" in sql else ()
    await connection.exec_driver_sql(sql, parameters)


async def test_orm_select_without_conversation_is_refused(wake_session: AsyncSession) -> None:
    with pytest.raises(PartitionScopeError, match="agent_wake_schedules"):
        await wake_session.scalars(select(WakeSchedule).where(WakeSchedule.status == "active"))


async def test_orm_select_with_conversation_passes(wake_factory: WakeFactory, wake_session: AsyncSession) -> None:
    created = await wake_factory.schedule(conversation_id=uuid.uuid4())
    found = await wake_session.scalars(
        select(WakeSchedule).where(WakeSchedule.conversation_id == created.conversation_id)
    )
    assert list(found) == [created]


async def test_orm_bulk_update_without_conversation_is_refused(
    wake_factory: WakeFactory,
    wake_session: AsyncSession,
) -> None:
    created = await wake_factory.schedule(conversation_id=uuid.uuid4())
    with pytest.raises(PartitionScopeError):
        await wake_session.execute(
            update(WakeSchedule).where(WakeSchedule.schedule_id == created.schedule_id).values(name="x")
        )
    await wake_session.rollback()


async def test_orm_bulk_delete_without_conversation_is_refused(wake_session: AsyncSession) -> None:
    with pytest.raises(PartitionScopeError):
        await wake_session.execute(delete(WakeFire).where(WakeFire.status == "dispatching"))


async def test_core_statement_on_a_bare_connection_is_refused(connection: AsyncConnection) -> None:
    with pytest.raises(PartitionScopeError, match="wake_fires"):
        await connection.execute(select(func.count()).select_from(WakeFire.__table__))


async def test_core_upsert_that_rewrites_conversation_id_is_refused(connection: AsyncConnection) -> None:
    statement = insert(WakeFire.__table__).values(conversation_id=uuid.uuid4(), fire_id=uuid.uuid4(), status="fired")
    statement = statement.on_conflict_do_update(
        index_elements=["fire_id"], set_={"conversation_id": statement.excluded.conversation_id}
    )
    with pytest.raises(PartitionScopeError, match="ON CONFLICT"):
        await connection.execute(statement)


async def test_spans_partitions_as_a_context_manager_allows_and_logs_the_reason(
    connection: AsyncConnection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent_wake.partition_guard")
    with spans_partitions("maintenance: count every fire"):
        await connection.execute(text("SELECT count(*) FROM wake_fires"))
    assert "maintenance: count every fire" in caplog.text
    assert "SELECT count(*) FROM wake_fires" in caplog.text
    await refused(connection, "SELECT count(*) FROM wake_fires")


async def test_spans_partitions_as_an_execution_option_allows_that_statement(
    connection: AsyncConnection,
) -> None:
    statement = text("SELECT count(*) FROM wake_fires").execution_options(**spans_partitions("report"))
    await connection.execute(statement)
    await connection.execute(text("SELECT count(*) FROM wake_fires"), execution_options=spans_partitions("report"))


async def test_one_span_entered_by_concurrent_tasks_holds_in_each(connection: AsyncConnection) -> None:
    shared = spans_partitions("report: shared span")

    async def inside() -> None:
        with shared:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)

    await asyncio.gather(inside(), inside(), inside())
    await refused(connection, "SELECT count(*) FROM wake_fires")


async def test_a_task_created_inside_a_span_does_not_inherit_it(connection: AsyncConnection) -> None:
    with spans_partitions("report: count every fire"):
        child = asyncio.create_task(refused(connection, "SELECT count(*) FROM wake_fires"))
        await child


async def test_a_task_created_inside_a_span_has_no_permission_after_the_block(connection: AsyncConnection) -> None:
    started = asyncio.Event()

    async def later() -> PartitionScopeError:
        await started.wait()
        return await refused(connection, "SELECT count(*) FROM wake_fires")

    with spans_partitions("report: count every fire"):
        child = asyncio.create_task(later())
    started.set()
    await child


async def test_a_span_covers_what_a_generator_sends_but_not_its_caller_while_it_is_suspended(
    connection: AsyncConnection,
) -> None:
    async def every_fire_count() -> AsyncIterator[int]:
        with spans_partitions("report: count every fire, twice"):
            yield (await connection.execute(text("SELECT count(*) FROM wake_fires"))).scalar_one()
            yield (await connection.execute(text("SELECT count(*) FROM wake_fires"))).scalar_one()

    counts = every_fire_count()
    await anext(counts)
    await refused(connection, "SELECT count(*) FROM wake_fires")
    await anext(counts)
    await counts.aclose()


async def test_a_helper_that_yields_inside_a_span_does_not_lend_it_to_the_callers_block(
    connection: AsyncConnection,
) -> None:
    @asynccontextmanager
    async def maintenance() -> AsyncIterator[None]:
        with spans_partitions("maintenance"):
            yield

    async with maintenance():
        await refused(connection, "SELECT count(*) FROM wake_fires")


async def test_a_helper_that_returns_a_span_lends_it_to_the_callers_block(connection: AsyncConnection) -> None:
    def maintenance() -> PartitionSpan:
        return spans_partitions("maintenance")

    with maintenance():
        await connection.execute(text("SELECT count(*) FROM wake_fires"))


async def test_a_span_entered_in_a_sync_function_run_through_run_sync_covers_it(connection: AsyncConnection) -> None:
    def count_every_fire(sync_connection: Connection) -> int:
        with spans_partitions("report: count every fire"):
            return int(sync_connection.execute(text("SELECT count(*) FROM wake_fires")).scalar_one())

    assert await connection.run_sync(count_every_fire) >= 0


async def test_nested_spans_leave_the_outer_one_open(connection: AsyncConnection) -> None:
    with spans_partitions("outer"):
        with spans_partitions("inner"):
            pass
        await connection.execute(text("SELECT count(*) FROM wake_fires"))
    await refused(connection, "SELECT count(*) FROM wake_fires")


def test_leaving_a_span_that_is_not_the_innermost_is_an_error() -> None:
    outer, inner = spans_partitions("outer"), spans_partitions("inner")
    outer.__enter__()
    inner.__enter__()
    with pytest.raises(RuntimeError, match="not the innermost span"):
        outer.__exit__(None, None, None)
    inner.__exit__(None, None, None)
    outer.__exit__(None, None, None)


async def test_leaving_a_span_from_another_task_than_the_one_that_entered_it_is_an_error() -> None:
    span = spans_partitions("report")
    span.__enter__()

    async def leave() -> None:
        span.__exit__(None, None, None)

    with pytest.raises(RuntimeError, match="by the task that entered them"):
        await asyncio.create_task(leave())
    span.__exit__(None, None, None)


@pytest.mark.parametrize("option", ["", "  ", None, 42])
async def test_an_empty_span_option_is_no_permission(connection: AsyncConnection, option: object) -> None:
    with pytest.raises(PartitionScopeError):
        await connection.execute(
            text("SELECT count(*) FROM wake_fires"), execution_options={"agent_wake_spans_partitions": option}
        )


@pytest.mark.parametrize("reason", ["", "   ", None])
def test_spans_partitions_requires_a_reason(reason: object) -> None:
    with pytest.raises(InvalidInputError) as caught:
        spans_partitions(reason)  # type: ignore[arg-type]
    assert caught.value.field == "reason"


async def test_the_refusal_is_an_agent_wake_error_and_the_transaction_survives(
    connection: AsyncConnection,
) -> None:
    with pytest.raises(AgentWakeError):
        await connection.execute(text("SELECT 1 FROM wake_fires"))
    assert (await connection.execute(text("SELECT 41 + 1"))).scalar_one() == 42


async def test_warn_mode_runs_the_statement_and_warns(wake_database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = create_async_engine(wake_database_url)
    install_partition_guard(engine, mode="warn")
    try:
        async with engine.connect() as connection:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = await connection.execute(text("SELECT count(*) FROM wake_fires"))
            assert result.scalar_one() >= 0
            assert any("wake_fires" in str(warning.message) for warning in caught)
            assert "refused a statement on wake_fires" in caplog.text
            install_partition_guard(engine, mode="off")
            await connection.execute(text("SELECT count(*) FROM wake_fires"))
            install_partition_guard(engine, mode="raise")
            with pytest.raises(PartitionScopeError):
                await connection.execute(text("SELECT count(*) FROM wake_fires"))
    finally:
        await engine.dispose()


def test_install_refuses_an_unknown_mode(wake_engine: AsyncEngine) -> None:
    with pytest.raises(InvalidInputError) as caught:
        install_partition_guard(wake_engine, mode="lenient")  # type: ignore[arg-type]
    assert caught.value.field == "mode"


def test_install_refuses_an_engine_whose_sql_it_cannot_read() -> None:
    engine = create_engine("sqlite://")
    with pytest.raises(InvalidInputError, match="asyncpg dialect") as caught:
        install_partition_guard(engine)
    assert caught.value.field == "engine"
