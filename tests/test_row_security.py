"""Row-level security with real roles: the application role sees and changes
only the conversations its transaction declared, whatever SQL it sends, and
cannot forge or replay a declaration. Hostile statements go straight to the
driver connection: the partition guard is not what is tested here."""

import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker, create_async_engine

from agent_wake import (
    DatabaseTimeoutError,
    InvalidInputError,
    RowSecurityError,
    SecretBox,
    WakeFireRepository,
    WakeScheduleRepository,
    WebhookSubscriptionRepository,
    create_engine_and_session_factory,
    declare_conversations,
    enforce_row_security,
    generate_declaration_key,
    install_row_security,
    use_row_security,
)
from agent_wake.testing import ScratchDatabases, migrate_to_head
from agent_wake.testing.row_security_roles import RowSecurityRoles

pytestmark = pytest.mark.asyncio


@dataclass(frozen=True)
class Conversation:
    conversation_id: uuid.UUID
    schedule_id: uuid.UUID
    fire_id: uuid.UUID
    subscription_id: uuid.UUID
    token: str  # a word only this conversation's fire output holds


async def _seed(session: AsyncSession, secrets: SecretBox, token: str) -> Conversation:
    conversation_id = uuid.uuid4()
    schedule = await WakeScheduleRepository(session).create(
        conversation_id=conversation_id,
        user_id=uuid.uuid4(),
        agent_id=uuid.uuid4(),
        schedule_type="interval",
        schedule_config={"seconds": 60},
        next_fire_at=datetime.now(UTC) - timedelta(minutes=1),
    )
    fires = WakeFireRepository(session)
    fire = await fires.create_dispatching(conversation_id=conversation_id, schedule_id=schedule.schedule_id)
    await fires.finalize_success(conversation_id, fire.fire_id, status="fired", output_text=f"said {token}")
    subscription = await WebhookSubscriptionRepository(session, secrets).create(
        conversation_id=conversation_id, user_id=uuid.uuid4(), agent_id=uuid.uuid4(), secret=f"secret-{token}"
    )
    return Conversation(conversation_id, schedule.schedule_id, fire.fire_id, subscription.subscription_id, token)


@pytest.fixture
async def conversations(
    wake_maintenance_sessions: async_sessionmaker[AsyncSession], wake_secrets: SecretBox
) -> tuple[Conversation, Conversation]:
    """Conversation A (the one the application declares) and B (another), committed by the maintenance role."""
    async with wake_maintenance_sessions() as session:
        a = await _seed(session, wake_secrets, "alphaword")
        b = await _seed(session, wake_secrets, "bravoword")
        await session.commit()
    return a, b


@pytest.fixture
async def declared_a(
    wake_application_sessions: async_sessionmaker[AsyncSession], conversations: tuple[Conversation, Conversation]
) -> AsyncIterator[tuple[asyncpg.Connection, Conversation, Conversation]]:
    """The application role's driver connection, inside a transaction that declared A (by a repository call)."""
    a, b = conversations
    async with wake_application_sessions() as session:
        assert await WakeScheduleRepository(session).get(a.conversation_id, a.schedule_id) is not None
        raw = await (await session.connection()).get_raw_connection()
        yield raw.driver_connection, a, b


async def _b_fire_as_stored(maintenance: async_sessionmaker[AsyncSession], b: Conversation) -> tuple[Any, ...]:
    async with maintenance() as session:
        fire = await WakeFireRepository(session).get(b.conversation_id, b.fire_id)
        assert fire is not None
        return fire.status, fire.output_text


# --- the application's own path --------------------------------------------------------------


async def test_repositories_work_for_the_declared_conversation(
    wake_application_sessions: async_sessionmaker[AsyncSession], wake_secrets: SecretBox
) -> None:
    async with wake_application_sessions() as session:
        created = await _seed(session, wake_secrets, "charlieword")
        await session.commit()
    async with wake_application_sessions() as session:
        fires = await WakeFireRepository(session).list_for_schedule(created.conversation_id, created.schedule_id)
        secret = await WebhookSubscriptionRepository(session, wake_secrets).reveal_secret(
            created.conversation_id, created.subscription_id
        )
        await WakeScheduleRepository(session).delete(created.conversation_id, created.schedule_id)
        await session.commit()
    assert [fire.output_text for fire in fires] == ["said charlieword"]
    assert secret == "secret-charlieword"


async def test_a_transaction_that_declared_nothing_reads_no_row(
    wake_application_sessions: async_sessionmaker[AsyncSession], conversations: tuple[Conversation, Conversation]
) -> None:
    async with wake_application_sessions() as session:
        raw = (await (await session.connection()).get_raw_connection()).driver_connection
        for table in ("agent_wake_schedules", "wake_fires", "webhook_subscriptions"):
            assert await raw.fetchval(f"SELECT count(*) FROM {table}") == 0, table


async def test_a_declaration_lasts_only_for_its_transaction(
    wake_row_security: RowSecurityRoles,
    wake_application_sessions: async_sessionmaker[AsyncSession],
    conversations: tuple[Conversation, Conversation],
) -> None:
    a, _ = conversations
    async with wake_application_sessions.kw["bind"].connect() as connection:  # one backend for both transactions
        session = AsyncSession(bind=connection)
        use_row_security(session, wake_row_security.key)
        await declare_conversations(session, [a.conversation_id])
        raw = (await connection.get_raw_connection()).driver_connection
        assert await raw.fetchval("SELECT count(*) FROM agent_wake_schedules") == 1
        await session.commit()
        await session.connection()
        assert await raw.fetchval("SELECT count(*) FROM agent_wake_schedules") == 0
        await session.close()


async def test_a_declaration_rolled_back_to_a_savepoint_is_made_again(
    wake_application_sessions: async_sessionmaker[AsyncSession], conversations: tuple[Conversation, Conversation]
) -> None:
    a, _ = conversations
    async with wake_application_sessions() as session:
        savepoint = await session.begin_nested()
        assert await WakeScheduleRepository(session).get(a.conversation_id, a.schedule_id) is not None
        await savepoint.rollback()
        assert await WakeScheduleRepository(session).get(a.conversation_id, a.schedule_id) is not None


async def test_cross_conversation_methods_refuse_a_declaring_session(
    wake_application_sessions: async_sessionmaker[AsyncSession], wake_secrets: SecretBox
) -> None:
    now = datetime.now(UTC)
    async with wake_application_sessions() as session:
        calls = {
            "claim_due": WakeScheduleRepository(session).claim_due(now, limit=10, next_fire=lambda s, n: None),
            "list_due": WakeScheduleRepository(session).list_due(now),
            "list_stale_dispatching": WakeFireRepository(session).list_stale_dispatching(now),
            "find_by_id": WebhookSubscriptionRepository(session, wake_secrets).find_by_id(uuid.uuid4()),
        }
        for method, call in calls.items():
            with pytest.raises(InvalidInputError) as refused:
                await call
            assert refused.value.field == "session"
            assert method in refused.value.rule


async def test_the_maintenance_role_claims_every_conversation(
    wake_maintenance_sessions: async_sessionmaker[AsyncSession], conversations: tuple[Conversation, Conversation]
) -> None:
    async with wake_maintenance_sessions() as session:
        claimed = await WakeScheduleRepository(session).claim_due(
            datetime.now(UTC), limit=10, next_fire=lambda schedule, now: now + timedelta(hours=1)
        )
        await session.rollback()
    assert {fire.conversation_id for fire in claimed} == {c.conversation_id for c in conversations}


async def test_a_session_with_another_key_is_refused(
    wake_application_sessions: async_sessionmaker[AsyncSession], conversations: tuple[Conversation, Conversation]
) -> None:
    a, _ = conversations
    async with wake_application_sessions() as session:
        use_row_security(session, b"another key, not the installed one")
        with pytest.raises(RowSecurityError, match="signature does not match"):
            await WakeScheduleRepository(session).get(a.conversation_id, a.schedule_id)


# --- hostile SQL from the application role, with A declared ----------------------------------


async def test_hostile_reads_return_only_the_declared_conversation(
    declared_a: tuple[asyncpg.Connection, Conversation, Conversation],
) -> None:
    raw, a, b = declared_a
    reads = {
        "plain select": "SELECT conversation_id::text FROM wake_fires",
        "join of all three": "SELECT f.conversation_id::text FROM wake_fires f, agent_wake_schedules s,"
        " webhook_subscriptions w",
        "ts_stat over outputs": "SELECT word FROM ts_stat("
        "'SELECT to_tsvector(''simple'', output_text) FROM wake_fires')",
        "ts_stat over secrets": "SELECT word FROM ts_stat("
        "'SELECT to_tsvector(''simple'', encode(secret_ciphertext, ''hex'')) FROM webhook_subscriptions')",
    }
    seen: list[str] = []
    for name, sql in reads.items():
        rows = await raw.fetch(sql)
        assert rows, name  # A's rows are there
        seen.extend(str(value) for row in rows for value in row)
    assert str(b.conversation_id) not in seen
    assert "bravoword" not in seen
    assert str(a.conversation_id) in seen
    assert "alphaword" in seen


async def test_copy_returns_only_the_declared_conversation(
    declared_a: tuple[asyncpg.Connection, Conversation, Conversation],
) -> None:
    raw, a, b = declared_a
    copied: list[bytes] = []

    async def collect(chunk: bytes) -> None:
        copied.append(chunk)

    await raw.copy_from_table("wake_fires", output=collect)
    dump = b"".join(copied).decode()
    assert str(a.conversation_id) in dump
    assert str(b.conversation_id) not in dump


async def test_query_to_xml_returns_only_the_declared_conversation(
    declared_a: tuple[asyncpg.Connection, Conversation, Conversation],
) -> None:
    raw, a, b = declared_a
    try:
        await raw.execute("SAVEPOINT probe; SELECT '<x/>'::xml; RELEASE SAVEPOINT probe")
    except asyncpg.FeatureNotSupportedError:
        pytest.skip("this server was built without libxml: query_to_xml cannot run here at all")
    xml = await raw.fetchval("SELECT query_to_xml('SELECT * FROM wake_fires', true, false, '')::text")
    assert str(a.conversation_id) in xml
    assert str(b.conversation_id) not in xml


async def test_a_security_invoker_view_and_function_see_only_the_declared(
    wake_row_security: RowSecurityRoles,
    wake_database_url: str,
    declared_a: tuple[asyncpg.Connection, Conversation, Conversation],
) -> None:
    raw, a, _ = declared_a
    suffix = uuid.uuid4().hex[:8]
    view, function = f"every_fire_{suffix}", f"every_schedule_{suffix}"
    owner = create_async_engine(wake_database_url)
    try:
        async with owner.begin() as connection:
            await connection.exec_driver_sql(
                f"CREATE VIEW {view} WITH (security_invoker = true) AS SELECT conversation_id FROM wake_fires"
            )
            await connection.exec_driver_sql(
                f"CREATE FUNCTION {function}() RETURNS SETOF uuid LANGUAGE sql SECURITY INVOKER"
                " AS 'SELECT conversation_id FROM public.agent_wake_schedules'"
            )
            await connection.exec_driver_sql(f"GRANT SELECT ON {view} TO {wake_row_security.application_role}")
        assert {row[0] for row in await raw.fetch(f"SELECT conversation_id FROM {view}")} == {a.conversation_id}
        assert {row[0] for row in await raw.fetch(f"SELECT * FROM {function}()")} == {a.conversation_id}
    finally:  # they stay (named for this test) until the session's database goes: the test's transaction uses them
        await owner.dispose()


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TEMP VIEW agent_wake_schedules AS SELECT * FROM public.agent_wake_schedules",
        "CREATE TEMP TABLE loot (x int)",
        "CREATE FUNCTION pg_temp.grab() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE TABLE public.loot (x int)",
        "CREATE SCHEMA loot",
    ],
)
async def test_the_application_role_cannot_create_objects_that_shadow_the_tables(
    declared_a: tuple[asyncpg.Connection, Conversation, Conversation], statement: str
) -> None:
    raw, _, _ = declared_a
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await raw.execute(statement)


async def test_pg_stats_shows_nothing_of_the_wake_tables(
    wake_maintenance_sessions: async_sessionmaker[AsyncSession],
    wake_database_url: str,
    declared_a: tuple[asyncpg.Connection, Conversation, Conversation],
) -> None:
    raw, _, b = declared_a
    owner = create_async_engine(wake_database_url)
    try:
        async with owner.connect() as connection:
            await connection.execute(text("ANALYZE wake_fires, agent_wake_schedules, webhook_subscriptions"))
    finally:
        await owner.dispose()
    stats = await raw.fetch(
        "SELECT most_common_vals::text, histogram_bounds::text FROM pg_stats"
        " WHERE tablename IN ('wake_fires', 'agent_wake_schedules', 'webhook_subscriptions')"
    )
    assert stats == []
    assert str(b.conversation_id) not in str(await raw.fetch("SELECT * FROM pg_stats_ext"))


async def test_hostile_writes_change_nothing_of_another_conversation(
    wake_maintenance_sessions: async_sessionmaker[AsyncSession],
    declared_a: tuple[asyncpg.Connection, Conversation, Conversation],
) -> None:
    raw, a, b = declared_a
    before = await _b_fire_as_stored(wake_maintenance_sessions, b)
    assert await raw.execute("UPDATE wake_fires SET output_text = 'overwritten'") == "UPDATE 1"
    assert await raw.execute("DELETE FROM agent_wake_schedules") == "DELETE 1"
    await raw.execute("COMMIT")
    assert await _b_fire_as_stored(wake_maintenance_sessions, b) == before
    async with wake_maintenance_sessions() as session:
        assert await WakeScheduleRepository(session).get(b.conversation_id, b.schedule_id) is not None
        assert await WakeScheduleRepository(session).get(a.conversation_id, a.schedule_id) is None


@pytest.mark.parametrize(
    ("statement", "refusal"),
    [
        ("UPDATE agent_wake_schedules SET conversation_id = '{b}'", "row-level security"),
        (
            "INSERT INTO wake_fires (conversation_id, fire_id, status, actual_fired_at)"
            " VALUES ('{b}', gen_random_uuid(), 'fired', now())",
            "row-level security",
        ),
        ("TRUNCATE wake_fires", "permission denied"),
        ("MERGE INTO wake_fires f USING (SELECT 1) s ON true WHEN MATCHED THEN DELETE", "row-level security"),
        ("SET row_security = off; SELECT * FROM wake_fires", "row-level security"),
        ("SET ROLE {maintenance}", "permission denied"),
        ("ALTER TABLE wake_fires DISABLE ROW LEVEL SECURITY", "must be owner"),
        ("DROP POLICY agent_wake_declared_conversations ON wake_fires", "must be owner"),
        ("SELECT * FROM agent_wake_security.declaration_key", "permission denied"),
        ("UPDATE agent_wake_security.backend_declarations SET granted = '{{{b}}}'", "permission denied"),
        (
            "CREATE TRIGGER spy BEFORE UPDATE ON public.wake_fires"
            " FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
            "permission denied",
        ),
    ],
)
async def test_escapes_from_the_policies_are_refused(
    wake_row_security: RowSecurityRoles,
    declared_a: tuple[asyncpg.Connection, Conversation, Conversation],
    statement: str,
    refusal: str,
) -> None:
    raw, _, b = declared_a
    with pytest.raises(asyncpg.PostgresError, match=refusal):
        await raw.execute(statement.format(b=b.conversation_id, maintenance=wake_row_security.maintenance_role))


async def test_a_foreign_key_to_a_wake_table_cannot_probe_for_ids(
    wake_row_security: RowSecurityRoles,
    wake_database_url: str,
    declared_a: tuple[asyncpg.Connection, Conversation, Conversation],
) -> None:
    raw, _, _ = declared_a
    schema = f"probe_{uuid.uuid4().hex[:10]}"
    owner = create_async_engine(wake_database_url)
    try:
        async with owner.begin() as connection:
            await connection.exec_driver_sql(
                f"CREATE SCHEMA {schema} AUTHORIZATION {wake_row_security.application_role}"
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await raw.execute(f"CREATE TABLE {schema}.probe (fire_id uuid REFERENCES public.wake_fires (fire_id))")
    finally:
        async with owner.begin() as connection:
            await connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        await owner.dispose()


# --- forging and replaying a declaration -----------------------------------------------------


def _signature(key: bytes, pid: int, started: int, counter: int, ids: list[uuid.UUID]) -> bytes:
    """The declaration as the application computes it (RFC 2104 HMAC-SHA256, Python's own)."""
    message = f"{pid}|{started}|{counter}|{','.join(map(str, ids))}".encode()
    return hmac.new(key, message, hashlib.sha256).digest()


async def _application_connection(roles: RowSecurityRoles) -> asyncpg.Connection:
    return await asyncpg.connect(roles.application_url.replace("postgresql+asyncpg://", "postgresql://"))


async def _backend(connection: asyncpg.Connection) -> tuple[int, int]:
    row = await connection.fetchrow(
        "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::bigint AS started"
        " FROM pg_stat_get_activity(pg_backend_pid())"
    )
    assert row is not None
    return row["pid"], row["started"]


_DECLARE = "SELECT agent_wake_security.declare_conversations($1, $2, $3)"
_COUNT_FIRES = "SELECT count(*) FROM wake_fires"


async def test_a_correct_signature_declares(
    wake_row_security: RowSecurityRoles, conversations: tuple[Conversation, Conversation]
) -> None:
    _, b = conversations
    connection = await _application_connection(wake_row_security)
    try:
        pid, started = await _backend(connection)
        async with connection.transaction():
            signature = _signature(wake_row_security.key, pid, started, 1, [b.conversation_id])
            await connection.execute(_DECLARE, [b.conversation_id], 1, signature)
            assert await connection.fetchval(_COUNT_FIRES) == 1
    finally:
        await connection.close()


@pytest.mark.parametrize("forgery", ["random bytes", "another key", "the right key, another conversation's ids"])
async def test_a_forged_declaration_is_refused(
    wake_row_security: RowSecurityRoles, conversations: tuple[Conversation, Conversation], forgery: str
) -> None:
    a, b = conversations
    connection = await _application_connection(wake_row_security)
    try:
        pid, started = await _backend(connection)
        signature = {
            "random bytes": bytes(32),
            "another key": _signature(b"k" * 32, pid, started, 1, [b.conversation_id]),
            "the right key, another conversation's ids": _signature(
                wake_row_security.key, pid, started, 1, [a.conversation_id]
            ),
        }[forgery]
        async with connection.transaction():
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="signature does not match"):
                await connection.execute(_DECLARE, [b.conversation_id], 1, signature)
        assert await connection.fetchval(_COUNT_FIRES) == 0
    finally:
        await connection.close()


async def test_a_declaration_made_for_another_backend_is_refused(
    wake_row_security: RowSecurityRoles, conversations: tuple[Conversation, Conversation]
) -> None:
    _, b = conversations
    victim, attacker = (
        await _application_connection(wake_row_security),
        await _application_connection(wake_row_security),
    )
    try:
        pid, started = await _backend(victim)
        seen = ([b.conversation_id], 1, _signature(wake_row_security.key, pid, started, 1, [b.conversation_id]))
        async with attacker.transaction():
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="signature does not match"):
                await attacker.execute(_DECLARE, *seen)
    finally:
        await victim.close()
        await attacker.close()


async def test_a_used_declaration_cannot_be_replayed_on_its_backend(
    wake_row_security: RowSecurityRoles, conversations: tuple[Conversation, Conversation]
) -> None:
    _, b = conversations
    connection = await _application_connection(wake_row_security)
    try:
        pid, started = await _backend(connection)
        declaration = ([b.conversation_id], 7, _signature(wake_row_security.key, pid, started, 7, [b.conversation_id]))
        async with connection.transaction():
            await connection.execute(_DECLARE, *declaration)
        async with connection.transaction():
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="counter was already used"):
                await connection.execute(_DECLARE, *declaration)
        older = ([b.conversation_id], 6, _signature(wake_row_security.key, pid, started, 6, [b.conversation_id]))
        async with connection.transaction():
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="counter was already used"):
                await connection.execute(_DECLARE, *older)
        assert await connection.fetchval(_COUNT_FIRES) == 0
    finally:
        await connection.close()


async def test_pg_stat_activity_shows_no_declaration_values(
    wake_row_security: RowSecurityRoles,
    wake_application_sessions: async_sessionmaker[AsyncSession],
    conversations: tuple[Conversation, Conversation],
) -> None:
    a, _ = conversations
    observer = await _application_connection(wake_row_security)
    try:
        async with wake_application_sessions() as session:
            await declare_conversations(session, [a.conversation_id])
            raw = (await (await session.connection()).get_raw_connection()).driver_connection
            seen = await observer.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", raw.get_server_pid())
        assert "declare_conversations($1" in seen
        assert str(a.conversation_id) not in seen
    finally:
        await observer.close()


# --- installing and switching on -------------------------------------------------------------


async def test_a_key_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(InvalidInputError) as refused:
        use_row_security(AsyncSession(), b"short")  # refused before anything connects
    assert refused.value.field == "key"


@asynccontextmanager
async def _login_roles(database_url: str, *names: str) -> AsyncIterator[dict[str, str]]:
    """Login roles made for one test (no password: the test server trusts local connections); their URLs.

    PUBLIC loses TEMPORARY on the database, as an application role must not have it."""
    owner = create_async_engine(database_url)
    try:
        async with owner.begin() as connection:
            await connection.exec_driver_sql(
                f'REVOKE TEMPORARY ON DATABASE "{make_url(database_url).database}" FROM PUBLIC'
            )
            for name in names:
                await connection.exec_driver_sql(f"CREATE ROLE {name} LOGIN")
        yield {name: make_url(database_url).set(username=name).render_as_string(False) for name in names}
    finally:
        async with owner.begin() as connection:
            await connection.exec_driver_sql(f"DROP OWNED BY {', '.join(names)}")
            await connection.exec_driver_sql(f"DROP ROLE {', '.join(names)}")
        await owner.dispose()


async def _row_security_switched_on(connection: AsyncConnection) -> list[bool]:
    found = await connection.execute(
        text(
            "SELECT relrowsecurity AND relforcerowsecurity FROM pg_class"
            " WHERE oid IN ('agent_wake_schedules'::regclass, 'wake_fires'::regclass,"
            " 'webhook_subscriptions'::regclass)"
        )
    )
    return list(found.scalars())


async def test_switching_on_waits_for_no_long_transaction_and_the_application_keeps_working(
    scratch_databases: ScratchDatabases,
) -> None:
    scratch_databases.migrate = migrate_to_head
    url = await scratch_databases.create()
    suffix = uuid.uuid4().hex[:8]
    application, maintenance = f"switch_app_{suffix}", f"switch_maintenance_{suffix}"
    key = generate_declaration_key()
    async with _login_roles(url, application, maintenance) as urls:
        owner = create_async_engine(url)
        engine, sessions = create_engine_and_session_factory(urls[application])
        use_row_security(sessions, key)
        try:
            async with owner.begin() as connection:
                await connection.run_sync(
                    install_row_security, key=key, application_role=application, maintenance_role=maintenance
                )
            # The application declares before anything is enforced: nothing changes for it.
            async with sessions() as session:
                created = await _seed(session, SecretBox.from_keys(SecretBox.generate_key()), "deltaword")
                await session.commit()

            async with sessions() as long_running:
                schedules = WakeScheduleRepository(long_running)
                assert await schedules.get(created.conversation_id, created.schedule_id) is not None
                async with owner.connect() as connection:
                    with pytest.raises(DatabaseTimeoutError):
                        await connection.run_sync(enforce_row_security, lock_timeout_ms=200)
                    await connection.rollback()
                    assert await _row_security_switched_on(connection) == [False, False, False]
                await schedules.pause(created.conversation_id, created.schedule_id)
                await long_running.commit()

            async with owner.begin() as connection:
                await connection.execute(text("SET LOCAL lock_timeout = '7s'"))
                await connection.run_sync(enforce_row_security, lock_timeout_ms=200)
                assert await _row_security_switched_on(connection) == [True, True, True]
                assert (await connection.execute(text("SHOW lock_timeout"))).scalar() == "7s"  # the caller's again
            async with sessions() as session:
                resumed = await WakeScheduleRepository(session).resume(
                    created.conversation_id, created.schedule_id, next_fire_at=datetime.now(UTC)
                )
                assert resumed.status == "active"
                raw = (await (await session.connection()).get_raw_connection()).driver_connection
                assert (
                    await raw.fetchval(
                        "SELECT count(*) FROM wake_fires WHERE conversation_id <> $1", created.conversation_id
                    )
                    == 0
                )
        finally:
            await engine.dispose()
            await owner.dispose()


async def test_install_refuses_roles_that_could_step_around_the_policies(scratch_databases: ScratchDatabases) -> None:
    scratch_databases.migrate = migrate_to_head
    url = await scratch_databases.create()
    database = make_url(url).database
    suffix = uuid.uuid4().hex[:8]
    application, maintenance = f"refused_app_{suffix}", f"refused_maintenance_{suffix}"
    member, creator, bypasser, via_bypass = (f"{kind}_{suffix}" for kind in ("member", "creator", "bypass", "via"))
    temporary, schema_creator = f"temporary_{suffix}", f"schema_creator_{suffix}"
    key = generate_declaration_key()
    roles = (application, maintenance, member, creator, bypasser, via_bypass, temporary, schema_creator)
    async with _login_roles(url, *roles) as _:
        owner = create_async_engine(url)
        try:
            async with owner.begin() as connection:
                for statement in (
                    f"GRANT {maintenance} TO {member}",
                    f"ALTER ROLE {creator} CREATEROLE",
                    f"ALTER ROLE {bypasser} BYPASSRLS",
                    f"GRANT {bypasser} TO {via_bypass}",
                    f'GRANT TEMPORARY ON DATABASE "{database}" TO {temporary}',
                    f"GRANT CREATE ON SCHEMA public TO {schema_creator}",
                ):
                    await connection.exec_driver_sql(statement)
            cases = {
                "the same role twice": (application, application, "must differ from maintenance_role"),
                "a superuser": ("postgres", maintenance, "it is a superuser"),
                "a member of the maintenance role": (
                    member,
                    maintenance,
                    f"is the maintenance role (through its membership of '{maintenance}')",
                ),
                "CREATEROLE": (creator, maintenance, "it has CREATEROLE"),
                "a member of a BYPASSRLS role": (
                    via_bypass,
                    maintenance,
                    f"has BYPASSRLS (through its membership of '{bypasser}')",
                ),
                "TEMPORARY": (temporary, maintenance, "can create temporary objects"),
                "CREATE on a schema": (schema_creator, maintenance, "can create objects in schema public"),
                "a role that does not exist": (f"nobody_{suffix}", maintenance, "must name an existing role"),
            }
            for case, (application_role, maintenance_role, rule) in cases.items():
                async with owner.begin() as connection:
                    with pytest.raises(InvalidInputError) as refused:
                        await connection.run_sync(
                            install_row_security,
                            key=key,
                            application_role=application_role,
                            maintenance_role=maintenance_role,
                        )
                    assert refused.value.field in {"application_role", "maintenance_role"}, case
                    assert rule in refused.value.rule, case
                    installed = await connection.execute(text("SELECT to_regnamespace('agent_wake_security')"))
                    assert installed.scalar() is None, case
            async with owner.begin() as connection:
                with pytest.raises(InvalidInputError, match="run install_row_security first"):
                    await connection.run_sync(enforce_row_security)
            async with owner.begin() as connection:  # the same roles, none of them refused, install
                await connection.run_sync(
                    install_row_security, key=key, application_role=application, maintenance_role=maintenance
                )
        finally:
            await owner.dispose()


async def test_a_declaration_answered_by_a_replaced_statement_closes_the_connection(
    wake_row_security: RowSecurityRoles, conversations: tuple[Conversation, Conversation]
) -> None:
    a, _ = conversations
    engine, sessions = create_engine_and_session_factory(wake_row_security.application_url, pool_size=1, max_overflow=0)
    use_row_security(sessions, wake_row_security.key)
    try:
        async with sessions() as session:
            assert await WakeScheduleRepository(session).get(a.conversation_id, a.schedule_id) is not None
            raw = (await (await session.connection()).get_raw_connection()).driver_connection
            hijacked_backend = raw.get_server_pid()
            # Hostile SQL on the same pooled connection puts its own statement under the driver's name.
            name = await raw.fetchval(
                "SELECT name FROM pg_prepared_statements"
                " WHERE starts_with(statement, 'SELECT agent_wake_security.declare_conversations(')"
            )
            await raw.execute(f'DEALLOCATE "{name}"')
            await raw.execute(f'PREPARE "{name}"(uuid[], bigint, bytea) AS SELECT NULL::bytea')
            await session.commit()
        async with sessions() as session:
            with pytest.raises(RowSecurityError, match="not acknowledged"):
                await WakeScheduleRepository(session).get(a.conversation_id, a.schedule_id)
        async with sessions() as session:  # a new connection, and the hijacked backend has ended
            assert await WakeScheduleRepository(session).get(a.conversation_id, a.schedule_id) is not None
            raw = (await (await session.connection()).get_raw_connection()).driver_connection
            assert raw.get_server_pid() != hijacked_backend
            assert await raw.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", hijacked_backend) == 0
    finally:
        await engine.dispose()


async def test_free_text_and_secret_columns_keep_no_planner_statistics(
    wake_row_security: RowSecurityRoles, wake_database_url: str, conversations: tuple[Conversation, Conversation]
) -> None:
    owner = create_async_engine(wake_database_url)
    try:
        async with owner.connect() as connection:
            await connection.execute(text("ANALYZE wake_fires, agent_wake_schedules, webhook_subscriptions"))
            sampled = await connection.execute(
                text(
                    "SELECT tablename || '.' || attname FROM pg_stats"
                    " WHERE tablename IN ('wake_fires', 'agent_wake_schedules', 'webhook_subscriptions')"
                )
            )
            columns = set(sampled.scalars())
    finally:
        await owner.dispose()
    assert "wake_fires.conversation_id" in columns  # the planner keeps what our queries filter on
    for column in (
        "wake_fires.output_text",
        "agent_wake_schedules.task_prompt",
        "agent_wake_schedules.name",
        "webhook_subscriptions.secret_ciphertext",
    ):
        assert column not in columns
