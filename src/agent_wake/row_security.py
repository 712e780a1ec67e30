"""Row-level security: PostgreSQL itself keeps an application role to the
conversations its transaction declared.

The partition guard checks the SQL this process sends; it cannot stop SQL
written by someone hostile from reaching the server through another path,
or a hole in its own reading. This layer is the server's enforcement, opt-in:

- :func:`install_row_security` (run by the tables' owner) creates the
  schema ``agent_wake_security`` with the declaration key and two
  ``SECURITY DEFINER`` functions, and on each wake table a policy for the
  *application role* (rows of the declared conversations only) and one for
  the *maintenance role* (every row: the tick, crash recovery, operator
  jobs). Until :func:`enforce_row_security` switches RLS on, the policies
  do nothing and declarations cost only their round trip, so the code that
  declares can be rolled out first: switching on needs no downtime.
- A session configured with :func:`use_row_security` declares, once per
  transaction, the conversations each repository call works on:
  ``agent_wake_security.declare_conversations(ids, counter, signature)``,
  one round trip, its values sent as bind parameters (never in the SQL text,
  so never in ``pg_stat_activity``). The signature is an HMAC-SHA256, under a
  key the application role cannot read, of the backend's pid and start
  time, a per-connection counter and the ids: another backend cannot use
  it (pid), nor can a later transaction of this one (the counter is
  recorded as used). The grant is bound to the transaction's id; the
  policies check it once per statement.

What SQL sent by the application role reads or changes is then confined to
the conversations its transaction declared; the declaration function
answers with an acknowledgement only it can compute, and a session that
gets none (its statement was replaced by SQL sent earlier on the
connection) closes the connection. Not covered (the README's "Row-level
security" says more): counts and the existence of a value (EXPLAIN, unique
and foreign-key checks); queries of the service replaced by hostile SQL
earlier on the same connection (run untrusted SQL on a connection closed
afterwards); the replay of a rolled-back declaration by someone who learnt
its bind parameters outside SQL.
"""

import hashlib
import hmac
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import ARRAY, BigInteger, Connection, LargeBinary, bindparam, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import SessionTransaction

from agent_wake import _validation as check
from agent_wake.database import validate_schema_name
from agent_wake.errors import InvalidInputError, RowSecurityError, translate_database_errors
from agent_wake.models import PARTITION_COLUMN, WAKE_TABLES

__all__ = [
    "MAX_DECLARED_CONVERSATIONS",
    "SECURITY_SCHEMA",
    "declare_conversations",
    "enforce_row_security",
    "generate_declaration_key",
    "install_row_security",
    "use_row_security",
]

SECURITY_SCHEMA: Final = "agent_wake_security"
MAX_DECLARED_CONVERSATIONS: Final = 10_000
_KEY_LENGTHS: Final = range(32, 65)  # an HMAC-SHA256 key of at most one block needs no hashing first
_BLOCK: Final = 64
_SESSION_KEY: Final = "agent_wake.declaration_key"
_SESSION_DECLARED: Final = "agent_wake.declared"
_CONNECTION_IDENTITY: Final = "agent_wake.backend_identity"
_DEFAULT_LOCK_TIMEOUT_MS: Final = 2_000

_DECLARE: Final = text(
    f"SELECT {SECURITY_SCHEMA}.declare_conversations(:conversation_ids, :counter, :signature)"
).bindparams(
    bindparam("conversation_ids", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("counter", type_=BigInteger()),
    bindparam("signature", type_=LargeBinary()),
)
_BACKEND_START: Final = text(
    "SELECT (extract(epoch FROM backend_start) * 1000000)::bigint FROM pg_stat_get_activity(pg_backend_pid())"
)


def generate_declaration_key() -> bytes:
    """A new random 32-byte declaration key (keep it with the application's other secrets)."""
    return os.urandom(32)


def _require_key(key: object) -> bytes:
    if not isinstance(key, bytes) or len(key) not in _KEY_LENGTHS:
        raise InvalidInputError("key", "must be bytes of length 32 to 64 (see generate_declaration_key())")
    return key


def _require_role(field: str, role: object) -> str:
    if not isinstance(role, str) or not role or len(role.encode()) > 63 or "\x00" in role:
        raise InvalidInputError(field, "must be the name of an existing role (1 to 63 bytes)")
    return role


# The server recomputes the HMAC from the key's two padded halves (RFC 2104), so it needs no extension.
_INSTALL_STATEMENTS: Final = (
    f"CREATE SCHEMA IF NOT EXISTS {SECURITY_SCHEMA}",
    f"REVOKE ALL ON SCHEMA {SECURITY_SCHEMA} FROM PUBLIC",
    f"""
CREATE TABLE IF NOT EXISTS {SECURITY_SCHEMA}.declaration_key (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    inner_pad bytea NOT NULL CHECK (length(inner_pad) = {_BLOCK}),
    outer_pad bytea NOT NULL CHECK (length(outer_pad) = {_BLOCK})
)
""",
    f"""
CREATE UNLOGGED TABLE IF NOT EXISTS {SECURITY_SCHEMA}.backend_declarations (
    pid integer PRIMARY KEY,
    backend_start bigint NOT NULL,
    last_counter bigint NOT NULL,
    granted_transaction xid8,
    granted uuid[] NOT NULL DEFAULT '{{}}'
)
""",
    f"REVOKE ALL ON {SECURITY_SCHEMA}.declaration_key, {SECURITY_SCHEMA}.backend_declarations FROM PUBLIC",
    f"""
CREATE OR REPLACE FUNCTION {SECURITY_SCHEMA}.declare_conversations(
    conversation_ids uuid[], counter bigint, signature bytea
) RETURNS bytea
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $body$
DECLARE
    started bigint;
    pads record;
    message bytea;
    recorded integer;
BEGIN
    IF conversation_ids IS NULL OR cardinality(conversation_ids) = 0
            OR cardinality(conversation_ids) > {MAX_DECLARED_CONVERSATIONS}
            OR array_position(conversation_ids, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'agent_wake: a declaration names 1 to {MAX_DECLARED_CONVERSATIONS} conversations, none NULL'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT (extract(epoch FROM a.backend_start) * 1000000)::bigint INTO started
        FROM pg_stat_get_activity(pg_backend_pid()) AS a;
    SELECT k.inner_pad, k.outer_pad INTO pads FROM {SECURITY_SCHEMA}.declaration_key AS k;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'agent_wake: no declaration key is installed' USING ERRCODE = 'insufficient_privilege';
    END IF;
    message := convert_to(
        format('%s|%s|%s|%s', pg_backend_pid(), started, counter, array_to_string(conversation_ids, ',')), 'UTF8');
    IF signature IS DISTINCT FROM sha256(pads.outer_pad || sha256(pads.inner_pad || message)) THEN
        RAISE EXCEPTION 'agent_wake: declaration refused: the signature does not match'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO {SECURITY_SCHEMA}.backend_declarations AS d
            (pid, backend_start, last_counter, granted_transaction, granted)
        VALUES (pg_backend_pid(), started, counter, pg_current_xact_id(), conversation_ids)
        ON CONFLICT (pid) DO UPDATE SET
            backend_start = excluded.backend_start,
            last_counter = excluded.last_counter,
            granted_transaction = excluded.granted_transaction,
            granted = CASE WHEN d.backend_start = excluded.backend_start
                            AND d.granted_transaction = excluded.granted_transaction
                      THEN d.granted || excluded.granted ELSE excluded.granted END
        WHERE d.backend_start <> excluded.backend_start OR d.last_counter < excluded.last_counter;
    GET DIAGNOSTICS recorded = ROW_COUNT;
    IF recorded = 0 THEN
        RAISE EXCEPTION 'agent_wake: declaration refused: its counter was already used on this backend'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- The acknowledgement: proof for the application that this function, not a statement put in its
    -- place, received the declaration.
    RETURN sha256(pads.outer_pad || sha256(pads.inner_pad || convert_to('ack|', 'UTF8') || message));
END
$body$
""",
    f"""
CREATE OR REPLACE FUNCTION {SECURITY_SCHEMA}.declared_conversations() RETURNS uuid[]
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $body$
    SELECT coalesce((
        SELECT d.granted FROM {SECURITY_SCHEMA}.backend_declarations AS d
        WHERE d.pid = pg_backend_pid() AND d.granted_transaction = pg_current_xact_id_if_assigned()
    ), '{{}}')
$body$
""",
    f"REVOKE ALL ON FUNCTION {SECURITY_SCHEMA}.declare_conversations(uuid[], bigint, bytea) FROM PUBLIC",
    f"REVOKE ALL ON FUNCTION {SECURITY_SCHEMA}.declared_conversations() FROM PUBLIC",
)

# What the application role must not hold on a wake table: TRUNCATE ignores policies, a trigger would
# run its code inside the maintenance role's statements, and a foreign key to a wake table is checked
# without policies (an existence probe).
_REVOKED_FROM_APPLICATION: Final = "TRUNCATE, REFERENCES, TRIGGER"
# Columns of free text and secrets: no query of ours filters on them, and the planner's statistics
# of a column, used even under row-level security, let EXPLAIN estimates spell out common values.
_UNSAMPLED_COLUMNS: Final = {
    "agent_wake_schedules": ("name", "task_prompt", "schedule_config"),
    "wake_fires": ("output_text", "error"),
    "webhook_subscriptions": ("name", "secret_ciphertext", "allowed_source_pattern", "task_prompt_template"),
}
_POLICY_DECLARED: Final = "agent_wake_declared_conversations"
_POLICY_MAINTENANCE: Final = "agent_wake_maintenance"


@dataclass(frozen=True)
class _Roles:
    application: str
    maintenance: str


# What a role must not reach, through any membership, for the policies to hold it: each of these
# lets SQL it sends step around them (SET ROLE to a role that bypasses them, grant itself one, read
# or write the data files, run a program, stream changes). Roles named here are the built-in ones.
_ESCAPES: Final = """
SELECT r.rolname, concat_ws(', ',
    CASE WHEN r.rolsuper THEN 'is a superuser' END,
    CASE WHEN r.rolbypassrls THEN 'has BYPASSRLS' END,
    CASE WHEN r.rolcreaterole THEN 'has CREATEROLE' END,
    CASE WHEN r.rolreplication THEN 'has REPLICATION' END,
    CASE WHEN r.rolname IN ('pg_read_server_files', 'pg_write_server_files', 'pg_execute_server_program')
         THEN 'reads or writes server files or runs programs' END,
    CASE WHEN r.rolname = :maintenance THEN 'is the maintenance role' END,
    CASE WHEN r.oid IN (SELECT relowner FROM pg_class WHERE oid = ANY (CAST(:tables AS regclass[])))
         THEN 'owns the wake tables' END
) AS escape
FROM pg_roles AS r
WHERE pg_has_role(:application, r.oid, 'MEMBER')
"""
# Objects the application role could create would let it shadow the unqualified table names the
# service's own statements use (a temporary view is found before the real table).
_CREATION: Final = """
SELECT concat_ws(', ',
    CASE WHEN has_database_privilege(:application, current_database(), 'TEMPORARY')
         THEN 'can create temporary objects (REVOKE TEMPORARY ON DATABASE ... FROM PUBLIC, and from it)' END,
    CASE WHEN has_database_privilege(:application, current_database(), 'CREATE')
         THEN 'can create schemas in this database' END,
    (SELECT 'can create objects in schema ' || string_agg(nspname, ', ')
       FROM pg_namespace
      WHERE has_schema_privilege(:application, oid, 'CREATE') AND NOT starts_with(nspname, 'pg_'))
)
"""


def _check_roles(connection: Connection, roles: _Roles, tables: list[str]) -> None:
    """Refuse roles with which the application side could step around the policies."""
    if roles.application == roles.maintenance:
        raise InvalidInputError("application_role", "must differ from maintenance_role")
    for field, role in (("application_role", roles.application), ("maintenance_role", roles.maintenance)):
        if connection.execute(text("SELECT to_regrole(quote_ident(:role))"), {"role": role}).scalar() is None:
            raise InvalidInputError(field, f"must name an existing role; there is none called {check.shown(role)}")
    parameters = {"application": roles.application, "maintenance": roles.maintenance, "tables": tables}
    for reached, escape in connection.execute(text(_ESCAPES), parameters).all():
        if escape:
            through = "" if reached == roles.application else f" (through its membership of {check.shown(reached)})"
            raise InvalidInputError(
                "application_role", f"must not be able to step around the policies: it {escape}{through}"
            )
    creation = connection.execute(text(_CREATION), parameters).scalar_one()
    if creation:
        raise InvalidInputError(
            "application_role", f"must not be able to create objects that shadow the wake tables: it {creation}"
        )


def _table_names(schema: str | None) -> list[str]:
    prefix = f"{validate_schema_name(schema)}." if schema is not None else ""
    return [f"{prefix}{table.name}" for table in WAKE_TABLES]


def install_row_security(
    connection: Connection,
    *,
    key: bytes,
    application_role: str,
    maintenance_role: str,
    schema: str | None = None,
    lock_timeout_ms: int = _DEFAULT_LOCK_TIMEOUT_MS,
) -> None:
    """Install (or update) the declaration machinery and the policies; RLS stays as it was.

    Run it as the wake tables' owner, in a transaction the caller commits
    (``op.get_bind()`` in an Alembic revision, or ``await
    connection.run_sync(install_row_security, ...)``). Idempotent; a
    different ``key`` replaces the installed one (sessions still using the
    old key are refused from that commit on). ``schema`` is where the wake
    tables are (default: the ``search_path``); the ``agent_wake_security``
    schema serves every wake-table schema of the database.

    Grants both roles USAGE on the tables' schema and SELECT, INSERT,
    UPDATE, DELETE on the wake tables, and the application role EXECUTE on
    the two functions; revokes TRUNCATE, REFERENCES and TRIGGER on the wake
    tables from the application role and PUBLIC. The free-text and secret
    columns get no planner statistics (``SET STATISTICS 0``, and those
    gathered so far are dropped): under row-level security the planner still
    uses them, and ``EXPLAIN`` estimates would spell out their common values.

    Refuses (``InvalidInputError`` on ``application_role``) an application
    role that, itself or through a role it is a member of, is a superuser,
    has BYPASSRLS, CREATEROLE or REPLICATION, may read or write server files
    or run programs, owns the wake tables or is the maintenance role; or
    that can create objects in this database (temporary ones included),
    which could shadow the tables the service's statements name. Checked
    once, here: keep such grants away from it afterwards too.

    Each table takes a brief ACCESS EXCLUSIVE lock, waiting at most ``lock_timeout_ms`` (else ``DatabaseTimeoutError``:
    retry when the long transaction in the way has ended).
    """
    pads = _pads(_require_key(key))
    roles = _Roles(
        _require_role("application_role", application_role), _require_role("maintenance_role", maintenance_role)
    )
    timeout = check.require_int("lock_timeout_ms", lock_timeout_ms, minimum=1, maximum=3_600_000)
    tables = _table_names(schema)
    quote = connection.dialect.identifier_preparer.quote
    application, maintenance = quote(roles.application), quote(roles.maintenance)
    with translate_database_errors():
        _check_roles(connection, roles, tables)
        previous_lock_timeout = _set_lock_timeout(connection, f"{timeout}ms")
        for statement in _INSTALL_STATEMENTS:
            connection.exec_driver_sql(statement)
        connection.execute(
            text(
                f"INSERT INTO {SECURITY_SCHEMA}.declaration_key (inner_pad, outer_pad) VALUES (:inner, :outer)"
                " ON CONFLICT (only_row) DO UPDATE SET inner_pad = excluded.inner_pad, outer_pad = excluded.outer_pad"
            ),
            {"inner": pads[0], "outer": pads[1]},
        )
        # Rows of backends that have exited are never looked at again.
        connection.exec_driver_sql(
            f"DELETE FROM {SECURITY_SCHEMA}.backend_declarations AS d"
            " WHERE NOT EXISTS (SELECT FROM pg_stat_get_activity(d.pid))"
        )
        table_schemas = connection.execute(
            text(
                "SELECT DISTINCT relnamespace::regnamespace::text FROM pg_class"
                " WHERE oid = ANY (CAST(:t AS regclass[]))"
            ),
            {"t": tables},
        ).scalars()
        for table_schema in table_schemas:  # regnamespace's text is already quoted where it must be
            connection.exec_driver_sql(f"GRANT USAGE ON SCHEMA {table_schema} TO {application}, {maintenance}")
        connection.exec_driver_sql(f"GRANT USAGE ON SCHEMA {SECURITY_SCHEMA} TO {application}")
        connection.exec_driver_sql(
            f"GRANT EXECUTE ON FUNCTION {SECURITY_SCHEMA}.declare_conversations(uuid[], bigint, bytea),"
            f" {SECURITY_SCHEMA}.declared_conversations() TO {application}"
        )
        declared = f"{PARTITION_COLUMN} = ANY ((SELECT {SECURITY_SCHEMA}.declared_conversations())::uuid[])"
        for table in tables:
            # Changing a column to its own type drops its statistics without rewriting the table.
            unsampled = connection.execute(
                text(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                    " WHERE attrelid = CAST(:table AS regclass) AND attname = ANY (CAST(:columns AS text[]))"
                ),
                {"table": table, "columns": list(_UNSAMPLED_COLUMNS[table.rpartition(".")[2]])},
            ).all()
            for statement in (
                f"ALTER TABLE {table} "
                + ", ".join(
                    f"ALTER COLUMN {name} SET STATISTICS 0, ALTER COLUMN {name} TYPE {kind}" for name, kind in unsampled
                ),
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {application}, {maintenance}",
                f"REVOKE {_REVOKED_FROM_APPLICATION} ON {table} FROM {application}, PUBLIC",
                f"DROP POLICY IF EXISTS {_POLICY_DECLARED} ON {table}",
                f"DROP POLICY IF EXISTS {_POLICY_MAINTENANCE} ON {table}",
                f"CREATE POLICY {_POLICY_DECLARED} ON {table} TO {application}"
                f" USING ({declared}) WITH CHECK ({declared})",
                f"CREATE POLICY {_POLICY_MAINTENANCE} ON {table} TO {maintenance} USING (true) WITH CHECK (true)",
            ):
                connection.exec_driver_sql(statement)
        _set_lock_timeout(connection, previous_lock_timeout)


def enforce_row_security(
    connection: Connection,
    *,
    enabled: bool = True,
    schema: str | None = None,
    lock_timeout_ms: int = _DEFAULT_LOCK_TIMEOUT_MS,
) -> None:
    """Switch row-level security on the wake tables on (or off, ``enabled=False``).

    Run after :func:`install_row_security`, once the application's sessions
    declare (:func:`use_row_security`). ``FORCE`` is set too, so the
    tables' owner is held to the policies like everyone but a superuser:
    run the tick and operator jobs as the maintenance role. Each table
    takes a brief ACCESS EXCLUSIVE lock, waiting at most ``lock_timeout_ms``
    (else ``DatabaseTimeoutError``, nothing changed once the caller rolls
    back: retry). Refuses to switch on before the policies are installed.
    """
    check.require_bool("enabled", enabled)
    timeout = check.require_int("lock_timeout_ms", lock_timeout_ms, minimum=1, maximum=3_600_000)
    tables = _table_names(schema)
    with translate_database_errors():
        if enabled:
            missing = (
                connection.execute(
                    text(
                        "SELECT t FROM unnest(CAST(:tables AS text[])) AS t WHERE NOT EXISTS"
                        " (SELECT FROM pg_policy WHERE polrelid = CAST(t AS regclass) AND polname = :policy)"
                    ),
                    {"tables": tables, "policy": _POLICY_DECLARED},
                )
                .scalars()
                .all()
            )
            if missing:
                raise InvalidInputError(
                    "connection", f"has no agent-wake policies on {', '.join(missing)}: run install_row_security first"
                )
        previous_lock_timeout = _set_lock_timeout(connection, f"{timeout}ms")
        action = (
            "ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY"
            if enabled
            else ("DISABLE ROW LEVEL SECURITY, NO FORCE ROW LEVEL SECURITY")
        )
        for table in tables:
            connection.exec_driver_sql(f"ALTER TABLE {table} {action}")
        _set_lock_timeout(connection, previous_lock_timeout)


def _set_lock_timeout(connection: Connection, value: str) -> str:
    """Set lock_timeout for the rest of the caller's transaction; returns the value it had."""
    previous: str = connection.execute(
        text("SELECT current_setting('lock_timeout'), set_config('lock_timeout', :value, true)"), {"value": value}
    ).one()[0]
    return previous


def _pads(key: bytes) -> tuple[bytes, bytes]:
    padded = key.ljust(_BLOCK, b"\x00")
    return bytes(b ^ 0x36 for b in padded), bytes(b ^ 0x5C for b in padded)


def use_row_security(target: AsyncSession | async_sessionmaker[AsyncSession], key: bytes) -> None:
    """Make the repositories on ``target`` (a session, or every session of a factory) declare their conversations.

    ``key`` is the one given to :func:`install_row_security`. Such a session
    declares, once per transaction (and savepoint), the conversations each
    repository call works on; the repository methods that span
    conversations (``claim_due``, ``list_due``, ``list_stale_dispatching``,
    ``find_by_id``) refuse to run on it: they belong to the maintenance
    role's sessions, which are not configured.
    """
    checked = _require_key(key)
    if isinstance(target, AsyncSession):
        target.info[_SESSION_KEY] = checked
    elif isinstance(target, async_sessionmaker):
        info = dict(target.kw.get("info") or {})
        info[_SESSION_KEY] = checked
        target.configure(info=info)
    else:
        raise InvalidInputError("target", "must be an AsyncSession or an async_sessionmaker")


def declares_conversations(session: AsyncSession) -> bool:
    """Whether ``session`` was configured by :func:`use_row_security`."""
    return _SESSION_KEY in session.info


async def declare_conversations(session: AsyncSession, conversation_ids: Iterable[uuid.UUID]) -> None:
    """Declare ``conversation_ids`` for the session's current transaction (for SQL of your own on the wake tables).

    The repositories call it for you. One round trip, none when this
    transaction (or savepoint) already declared them; one more the first
    time a pooled connection declares. Refuses a session not configured by
    :func:`use_row_security`. A refused declaration raises
    :class:`~agent_wake.errors.RowSecurityError`.
    """
    key = session.info.get(_SESSION_KEY)
    if key is None:
        raise InvalidInputError("session", "must be configured with use_row_security() first")
    if isinstance(conversation_ids, (str, bytes)):
        raise InvalidInputError("conversation_ids", "must be an iterable of UUIDs")
    ids = sorted({check.require_uuid("conversation_ids", value) for value in conversation_ids}, key=str)
    if not 0 < len(ids) <= MAX_DECLARED_CONVERSATIONS:
        raise InvalidInputError("conversation_ids", f"must name 1 to {MAX_DECLARED_CONVERSATIONS} conversations")
    await _declare(session, key, ids)


async def declare_for_repository(session: AsyncSession, conversation_ids: Iterable[uuid.UUID]) -> None:
    """What each repository call runs first: declare when the session is configured, else nothing."""
    key = session.info.get(_SESSION_KEY)
    if key is not None:
        await _declare(session, key, sorted(set(conversation_ids), key=str))


async def _declare(session: AsyncSession, key: bytes, ids: list[uuid.UUID]) -> None:
    with translate_database_errors():
        connection = await session.connection()
        transaction = _innermost_transaction(session)
        held = session.info.get(_SESSION_DECLARED)
        if held is not None and held[0] is transaction and held[1].issuperset(ids):
            return
        identity = connection.info.get(_CONNECTION_IDENTITY)
        if identity is None:
            # The pid comes from the protocol's start-up, which no SQL can change; a start time
            # misreported by a hijacked statement only makes the signature fail elsewhere.
            driver: Any = (await connection.get_raw_connection()).driver_connection  # asyncpg's Connection
            started = (await connection.execute(_BACKEND_START)).scalar_one()
            identity = connection.info[_CONNECTION_IDENTITY] = _BackendIdentity(driver.get_server_pid(), started)
        identity.counter += 1
        message = f"{identity.pid}|{identity.started}|{identity.counter}|{','.join(map(str, ids))}".encode()
        signature = hmac.new(key, message, hashlib.sha256).digest()
        acknowledged = (
            await connection.execute(
                _DECLARE, {"conversation_ids": ids, "counter": identity.counter, "signature": signature}
            )
        ).scalar_one()
        expected = hmac.new(key, b"ack|" + message, hashlib.sha256).digest()
        if not isinstance(acknowledged, bytes) or not hmac.compare_digest(acknowledged, expected):
            # Something answered in the function's place (a prepared statement replaced by SQL sent
            # earlier on this connection) and may hold the declaration: closing the connection ends
            # the backend it is bound to.
            await connection.invalidate()
            raise RowSecurityError(
                "the declaration was not acknowledged by agent_wake_security.declare_conversations: a statement "
                "sent earlier on this connection replaced it; the connection was closed",
                sqlstate=None,
            )
        declared = held[1] | frozenset(ids) if held is not None and held[0] is transaction else frozenset(ids)
        session.info[_SESSION_DECLARED] = (transaction, declared)


def _innermost_transaction(session: AsyncSession) -> SessionTransaction | None:
    sync = session.sync_session
    return sync.get_nested_transaction() or sync.get_transaction()


@dataclass
class _BackendIdentity:
    """What a declaration binds to: the backend (pid and start time), and the last counter this connection used."""

    pid: int
    started: int
    counter: int = 0
