"""The ways through the partition guard that issue 11 reported, and the
variants found near each, on a real server through engines built by
``create_engine_and_session_factory()``.

Each hostile case is run twice: with the guard off it reads or changes a
row of conversation B although it names only A (the reproduction, so the
case is known to be a real way through), and with the guard on it is
refused before it is sent.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_wake import (
    PartitionScopeError,
    SecretBox,
    WakeFireRepository,
    WakeScheduleRepository,
    WebhookSubscriptionRepository,
    create_engine_and_session_factory,
    spans_partitions,
)
from agent_wake.migration_config import alembic_config
from agent_wake.testing import ScratchDatabase
from agent_wake.testing.factories import WakeFactory
from agent_wake.testing.pytest_plugin import TestServer
from tests.clock import NOW

A = uuid.UUID("00000000-0000-0000-0000-00000000000a")
B = uuid.UUID("00000000-0000-0000-0000-00000000000b")
# One word each, so that text search output (ts_stat) shows them too.
OUTPUT = {A: "alpha", B: "bravo"}
AGENT_SCHEMA = f"agent_{uuid.uuid4().hex}"


async def seed(url: str, schema: str | None = None) -> None:
    """A schedule, a fired fire and a webhook subscription in each of A and B,
    written through the repositories on a guarded engine, committed."""
    engine, sessions = create_engine_and_session_factory(url, schema=schema, poolclass=pool.NullPool)
    try:
        async with sessions() as session, session.begin():
            factory = WakeFactory(session, SecretBox.from_keys(SecretBox.generate_key()))
            for conversation, output in OUTPUT.items():
                fire = await factory.fire(conversation_id=conversation)
                await WakeFireRepository(session).finalize_success(
                    conversation, fire.fire_id, status="fired", output_text=output
                )
                await factory.subscription(conversation_id=conversation, name=output)
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
async def database(wake_server: TestServer) -> AsyncIterator[str]:
    """A database of this module's own (a test changes its defaults), seeded by :func:`seed`."""
    async with ScratchDatabase(wake_server.url, prefix="agent_wake_bypasses") as url:
        await seed(url)
        yield url


def engine_on(url: str, **options: Any) -> AsyncEngine:
    engine, _ = create_engine_and_session_factory(url, poolclass=pool.NullPool, **options)
    return engine


@pytest.fixture
async def guarded(database: str) -> AsyncIterator[AsyncEngine]:
    engine = engine_on(database)
    yield engine
    await engine.dispose()


@pytest.fixture
async def unguarded(database: str) -> AsyncIterator[AsyncEngine]:
    engine = engine_on(database, partition_guard="off")
    yield engine
    await engine.dispose()


@dataclass(frozen=True)
class Case:
    """A hostile statement, the statements that prepare its ground (the
    guard lets them through), and what reads its result afterwards when the
    hostile statement itself stores a standing read (a view, an operator)."""

    hostile: str
    setup: tuple[str, ...] = ()
    setup_in_span: tuple[str, ...] = ()
    read_after: str | None = None


async def run(connection: AsyncConnection, case: Case) -> str:
    """Run ``case`` in the connection's transaction; what the last statement returned, as text."""
    for statement in case.setup:
        await connection.execute(text(statement))
    with spans_partitions("test: the ground of a hostile case"):
        for statement in case.setup_in_span:
            await connection.execute(text(statement))
    result = await connection.execute(text(case.hostile))
    if case.read_after is not None:
        result = await connection.execute(text(case.read_after))
    return str(result.all()) if result.returns_rows else ""


def reaches_b(returned: str) -> bool:
    return OUTPUT[B] in returned or str(B) in returned


def hostile_literal(marker: str) -> str:
    """A WHERE clause pinned to A for pglast, ``... OR true`` for a server that reads backslashes as escapes."""
    return f"conversation_id = '{A}' AND status <> {marker}'\\' AND status <> ' OR true --'\n"


SELECT_PINNED_TO_A_FOR_PGLAST = f"SELECT output_text FROM wake_fires WHERE {hostile_literal('')}"


def pinned_to_a_in_utf8(character: str) -> str:
    """Pinned to A for pglast; for a server that reads the UTF-8 bytes in an encoding where
    ``character``'s last byte starts a two-byte character, the backslash after it is swallowed
    and the E'' string ends one quote early: ``... OR true``."""
    return (
        f"SELECT output_text FROM wake_fires WHERE conversation_id = '{A}' AND status <> E'{character}\\' OR true --'"
    )


# A character of each encoding's such pair (found by trying them on PostgreSQL 15); none was
# found for UHC (no trail byte is a backslash) or JOHAB (no such pair converts).
SWALLOWING_CHARACTERS = {"SJIS": "ё", "BIG5": "中", "GBK": "中", "GB18030": "中"}
SELECT_PINNED_TO_A_IN_UTF8 = pinned_to_a_in_utf8("ё")
QUERY_OF_EVERY_OUTPUT = "SELECT output_text FROM wake_fires"
TEMP_WAKE_FIRES = (
    "CREATE TEMP TABLE wake_fires (conversation_id uuid, output_text text)",
    f"INSERT INTO pg_temp.wake_fires (conversation_id, output_text) VALUES ('{A}', 'temporary')",
)

CASES = {
    # 1. Settings that change how the server reads the text the guard parsed.
    "standard_conforming_strings_off_by_set": Case(
        SELECT_PINNED_TO_A_FOR_PGLAST, setup=("SET standard_conforming_strings = off",)
    ),
    "standard_conforming_strings_off_by_set_local": Case(
        SELECT_PINNED_TO_A_FOR_PGLAST, setup=("SET LOCAL standard_conforming_strings = off",)
    ),
    "standard_conforming_strings_off_by_set_config": Case(
        SELECT_PINNED_TO_A_FOR_PGLAST, setup=("SELECT set_config('standard_conforming_strings', 'off', false)",)
    ),
    "update_pinned_to_a_changes_b_under_standard_conforming_strings_off": Case(
        f"UPDATE wake_fires SET error = 'overwritten' WHERE {hostile_literal('')}RETURNING output_text",
        setup=("SET standard_conforming_strings = off",),
    ),
    **{
        f"client_encoding_{encoding}": Case(
            pinned_to_a_in_utf8(character), setup=(f"SET client_encoding = '{encoding}'",)
        )
        for encoding, character in SWALLOWING_CHARACTERS.items()
    },
    "client_encoding_by_set_config_with_backslash_quote_on": Case(
        SELECT_PINNED_TO_A_IN_UTF8,
        setup=("SET backslash_quote = on", "SELECT set_config('client_encoding', 'SJIS', true)"),
    ),
    # 2. EXECUTE, and what a span leaves prepared or declared.
    "execute_with_a_query_running_parameter": Case(
        f"EXECUTE p(query_to_xml('{QUERY_OF_EVERY_OUTPUT}', true, false, ''))", setup=("PREPARE p(xml) AS SELECT $1",)
    ),
    "execute_outside_a_span_of_a_statement_prepared_inside_it": Case(
        "EXECUTE p", setup_in_span=(f"PREPARE p AS {QUERY_OF_EVERY_OUTPUT}",)
    ),
    "fetch_outside_a_span_from_a_cursor_declared_inside_it": Case(
        "FETCH ALL FROM c", setup_in_span=(f"DECLARE c CURSOR FOR {QUERY_OF_EVERY_OUTPUT}",)
    ),
    "cursor_to_xml_outside_a_span_of_a_cursor_declared_inside_it": Case(
        "SELECT cursor_to_xml('c', 10, true, false, '')",
        setup_in_span=(f"DECLARE c CURSOR FOR {QUERY_OF_EVERY_OUTPUT}",),
    ),
    "call_with_a_query_running_argument": Case(
        f"CALL pg_temp.echo(query_to_xml('{QUERY_OF_EVERY_OUTPUT}', true, false, ''))",
        setup=("CREATE PROCEDURE pg_temp.echo(INOUT x xml) LANGUAGE plpgsql AS $$BEGIN END$$",),
    ),
    "view_storing_an_unpinned_read": Case(
        f"CREATE TEMP VIEW every_output AS {QUERY_OF_EVERY_OUTPUT}", read_after="SELECT * FROM every_output"
    ),
    # 3. Qualified names bound to another relation than the one they pin.
    "pin_on_a_temporary_table_of_the_same_name_in_select": Case(
        f"SELECT public.wake_fires.output_text FROM public.wake_fires, pg_temp.wake_fires "
        f"WHERE pg_temp.wake_fires.conversation_id = '{A}'",
        setup=TEMP_WAKE_FIRES,
    ),
    "pin_on_a_temporary_table_of_the_same_name_in_delete_using": Case(
        f"DELETE FROM public.wake_fires USING pg_temp.wake_fires WHERE pg_temp.wake_fires.conversation_id = '{A}' "
        "RETURNING public.wake_fires.output_text",
        setup=TEMP_WAKE_FIRES,
    ),
    "pin_through_an_equals_operator_of_another_schema": Case(
        f"SELECT output_text FROM wake_fires WHERE conversation_id OPERATOR(hostile.=) '{A}'::uuid",
        setup=(
            "CREATE SCHEMA hostile",
            "CREATE FUNCTION hostile.always(uuid, uuid) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
            "CREATE OPERATOR hostile.= (FUNCTION = hostile.always, LEFTARG = uuid, RIGHTARG = uuid)",
        ),
    ),
    # 4. Built-ins that run SQL given as text.
    "ts_stat": Case("SELECT * FROM ts_stat('SELECT to_tsvector(''simple'', output_text) FROM wake_fires')"),
    "ts_stat_schema_qualified": Case(
        "SELECT * FROM pg_catalog.ts_stat('SELECT to_tsvector(''simple'', output_text) FROM wake_fires')"
    ),
    "ts_stat_called_as_a_field": Case(
        "SELECT (('SELECT to_tsvector(''simple'', output_text) FROM wake_fires')::text).ts_stat"
    ),
    "ts_stat_of_the_webhook_secrets": Case(
        "SELECT * FROM ts_stat('SELECT to_tsvector(''simple'', name || '' '' || encode(secret_ciphertext, ''hex'')) "
        "FROM webhook_subscriptions')"
    ),
    "ts_rewrite_with_a_query": Case(
        "SELECT ts_rewrite('x'::tsquery, 'SELECT ''x''::tsquery, "
        "to_tsquery(''simple'', string_agg(output_text, '' | '')) FROM wake_fires')"
    ),
    "operator_calling_ts_stat": Case(
        "CREATE OPERATOR pg_temp.## (FUNCTION = ts_stat, RIGHTARG = text)",
        read_after="SELECT OPERATOR(pg_temp.##) 'SELECT to_tsvector(''simple'', output_text) FROM wake_fires'",
    ),
    # 6. The planner's statistics hold sample values of every conversation.
    "pg_stats_after_analyze": Case(
        "SELECT histogram_bounds::text, most_common_vals::text FROM pg_stats "
        "WHERE tablename = 'wake_fires' AND attname = 'output_text'",
        setup=("ANALYZE wake_fires",),
    ),
}


async def server_has_libxml(engine: AsyncEngine) -> bool:
    async with engine.connect() as probe:
        try:
            await probe.execute(text("SELECT xmlcomment('probe')"))
        except DBAPIError:  # unsupported XML feature: built without libxml
            return False
    return True


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_without_the_guard_the_case_reaches_another_conversation(unguarded: AsyncEngine, case: Case) -> None:
    if "xml" in case.hostile and not await server_has_libxml(unguarded):
        pytest.skip("this server is built without libxml (the embedded one is): the XML case cannot run on it")
    async with unguarded.connect() as connection:
        returned = await run(connection, case)
        await connection.rollback()
    assert reaches_b(returned), returned


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_the_guard_refuses_the_case(guarded: AsyncEngine, case: Case) -> None:
    async with guarded.connect() as connection:
        with pytest.raises(PartitionScopeError) as caught:
            await run(connection, case)
        await connection.rollback()
    assert caught.value.sql == case.hostile


async def test_a_statement_prepared_inside_a_span_runs_inside_one(guarded: AsyncEngine) -> None:
    async with guarded.connect() as connection:
        with spans_partitions("test: prepare and run a cross-partition statement"):
            await connection.execute(text(f"PREPARE p AS {QUERY_OF_EVERY_OUTPUT}"))
            returned = str((await connection.execute(text("EXECUTE p"))).all())
        await connection.rollback()
    assert reaches_b(returned)


async def test_text_without_backslashes_or_non_ascii_runs_whatever_the_settings(guarded: AsyncEngine) -> None:
    async with guarded.connect() as connection:
        await connection.execute(text("SET standard_conforming_strings = off"))
        await connection.execute(text("SET client_encoding = 'SJIS'"))
        pinned = f"SELECT output_text FROM wake_fires WHERE conversation_id = '{A}'"
        returned = (await connection.execute(text(pinned))).scalars().all()
        # The way back is such text too.
        await connection.execute(text("RESET client_encoding"))
        await connection.execute(text("SET standard_conforming_strings = on"))
        after = (await connection.execute(text(SELECT_PINNED_TO_A_IN_UTF8.replace("ё", "e")))).scalars().all()
        await connection.rollback()
    assert returned == [OUTPUT[A]]
    assert after == [OUTPUT[A]]


# backslash_quote is not reported to the driver, and needs no check: in UTF8
# the server reads \' as pglast does (on, safe_encoding) or refuses it (off).
@pytest.mark.parametrize("value", ["on", "safe_encoding"])
async def test_backslash_quote_that_accepts_escaped_quotes_reads_them_as_the_guard(
    guarded: AsyncEngine, value: str
) -> None:
    async with guarded.connect() as connection:
        await connection.execute(text(f"SET backslash_quote = {value}"))
        returned = (await connection.execute(text(SELECT_PINNED_TO_A_IN_UTF8))).scalars().all()
        await connection.rollback()
    assert returned == [OUTPUT[A]]


async def test_backslash_quote_off_makes_the_server_refuse_escaped_quotes(guarded: AsyncEngine) -> None:
    async with guarded.connect() as connection:
        await connection.execute(text("SET backslash_quote = off"))
        with pytest.raises(DBAPIError, match="unsafe use of"):
            await connection.execute(text(SELECT_PINNED_TO_A_IN_UTF8))
        await connection.rollback()


@pytest.mark.parametrize("encoding", ["UHC", "JOHAB", "LATIN1", "EUC_JP"])
async def test_text_with_non_ascii_is_refused_under_any_client_encoding_but_utf8(
    guarded: AsyncEngine, encoding: str
) -> None:
    async with guarded.connect() as connection:
        await connection.execute(text(f"SET client_encoding = '{encoding}'"))
        with pytest.raises(PartitionScopeError, match=f"client_encoding is '{encoding}'"):
            await connection.execute(text(f"SELECT output_text FROM wake_fires WHERE conversation_id = '{A}' -- é"))
        await connection.rollback()


async def test_a_span_does_not_lift_the_settings_refusal(guarded: AsyncEngine) -> None:
    # The server would keep its reading of the text for that text's next run, outside the span.
    async with guarded.connect() as connection:
        await connection.execute(text("SET standard_conforming_strings = off"))
        with spans_partitions("test: a cross-partition read"), pytest.raises(PartitionScopeError, match="standard_"):
            await connection.execute(text(SELECT_PINNED_TO_A_FOR_PGLAST))
        await connection.rollback()


@pytest.mark.parametrize(
    "server_settings",
    [{"standard_conforming_strings": "off"}, {"options": "-c standard_conforming_strings=off"}],
    ids=["server_settings", "startup_options"],
)
async def test_a_connection_configured_at_connect_time_is_read_as_reported(
    database: str, server_settings: dict[str, str]
) -> None:
    engine = engine_on(database, connect_args={"server_settings": server_settings})
    try:
        async with engine.connect() as connection:
            with pytest.raises(PartitionScopeError, match="standard_conforming_strings is 'off'"):
                await connection.execute(text(SELECT_PINNED_TO_A_FOR_PGLAST))
    finally:
        await engine.dispose()


async def test_a_database_default_and_reset_to_it_are_read_as_reported(database: str, guarded: AsyncEngine) -> None:
    # ALTER ROLE ... SET reaches a new connection the same way, reported at its start.
    name = make_url(database).database
    admin_engine = engine_on(database, partition_guard="off")
    async with admin_engine.connect() as admin:
        await admin.execute(text(f'ALTER DATABASE "{name}" SET standard_conforming_strings = off'))
        await admin.commit()
        try:
            async with guarded.connect() as connection:
                with pytest.raises(PartitionScopeError, match="standard_conforming_strings is 'off'"):
                    await connection.execute(text(SELECT_PINNED_TO_A_FOR_PGLAST))
                await connection.execute(text("SET standard_conforming_strings = on"))
                await connection.execute(text(SELECT_PINNED_TO_A_FOR_PGLAST))
                await connection.execute(text("RESET standard_conforming_strings"))
                with pytest.raises(PartitionScopeError, match="standard_conforming_strings is 'off'"):
                    await connection.execute(text(SELECT_PINNED_TO_A_FOR_PGLAST))
                await connection.rollback()
        finally:
            await admin.execute(text(f'ALTER DATABASE "{name}" RESET standard_conforming_strings'))
            await admin.commit()
    await admin_engine.dispose()


@pytest.fixture(scope="module")
async def agent_schema(database: str) -> str:
    """A copy of the wake tables in an ``agent_<32 hex>`` schema of the module's database, seeded."""

    def migrate() -> None:
        from alembic import command

        command.upgrade(alembic_config(database, schema=AGENT_SCHEMA), "head")

    await asyncio.to_thread(migrate)
    await seed(database, schema=AGENT_SCHEMA)
    return AGENT_SCHEMA


async def test_the_repositories_run_guarded_with_an_agent_schema_as_search_path(
    database: str, agent_schema: str
) -> None:
    # The statements name the tables unqualified and pin them by table name; the schema is the search_path's.
    engine, sessions = create_engine_and_session_factory(database, schema=agent_schema, poolclass=pool.NullPool)
    secrets = SecretBox.from_keys(SecretBox.generate_key())
    try:
        async with sessions() as session, session.begin():
            schedules = WakeScheduleRepository(session)
            fires = WakeFireRepository(session)
            webhooks = WebhookSubscriptionRepository(session, secrets)
            conversation = uuid.uuid4()
            schedule = await WakeFactory(session, secrets).schedule(conversation_id=conversation, next_fire_at=NOW)
            assert await schedules.get(conversation, schedule.schedule_id) == schedule
            assert await schedules.list_for_conversation(conversation) == [schedule]
            await schedules.update(conversation, schedule.schedule_id, name="renamed")
            claimed = await schedules.claim_due(NOW, limit=10, next_fire=lambda schedule, now: None)
            assert conversation in {claim.conversation_id for claim in claimed}
            fire = await fires.create_dispatching(conversation_id=conversation, schedule_id=schedule.schedule_id)
            await fires.finalize_success(conversation, fire.fire_id, status="fired", output_text="done")
            assert await fires.list_for_schedule(conversation, schedule.schedule_id)
            subscription = await webhooks.create(
                conversation_id=conversation, user_id=uuid.uuid4(), agent_id=uuid.uuid4(), secret="s" * 32
            )
            assert await webhooks.find_by_id(subscription.subscription_id) == subscription
            assert await webhooks.reveal_secret(conversation, subscription.subscription_id) == "s" * 32
            await webhooks.delete(conversation, subscription.subscription_id)
            await session.rollback()
    finally:
        await engine.dispose()
