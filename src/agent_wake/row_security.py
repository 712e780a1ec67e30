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

What the application role sends, however hostile, then reads and changes
only rows of conversations this transaction declared. A declaration whose
transaction rolled back is not recorded as used (nothing a rolled-back
transaction wrote survives): whoever learnt its bind parameters (the
server log with parameter logging, the wire) could replay it in a later
transaction of the same backend. Counts are not hidden: ``EXPLAIN ANALYZE``
row counts, ``pg_class.reltuples`` and ``pg_stat_user_tables`` tell how many
rows a table holds, and a unique or foreign key check tells whether an id
exists anywhere (PostgreSQL's RLS documents both).
"""

import hashlib
import hmac
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from sqlalchemy import ARRAY, BigInteger, Connection, LargeBinary, bindparam, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import SessionTransaction

from agent_wake import _validation as check
from agent_wake.database import validate_schema_name
from agent_wake.errors import InvalidInputError, translate_database_errors
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
_BACKEND_IDENTITY: Final = text(
    "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::bigint AS started"
    " FROM pg_stat_get_activity(pg_backend_pid())"
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
) RETURNS void
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
_POLICY_DECLARED: Final = "agent_wake_declared_conversations"
_POLICY_MAINTENANCE: Final = "agent_wake_maintenance"


@dataclass(frozen=True)
class _Roles:
    application: str
    maintenance: str


def _check_roles(connection: Connection, roles: _Roles, tables: list[str]) -> None:
    """Refuse roles with which the application side could step around the policies."""
    if roles.application == roles.maintenance:
        raise InvalidInputError("application_role", "must differ from maintenance_role")
    found = connection.execute(
        text("SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname IN (:application, :maintenance)"),
        {"application": roles.application, "maintenance": roles.maintenance},
    ).all()
    named = {row.rolname: row for row in found}
    for field, role in (("application_role", roles.application), ("maintenance_role", roles.maintenance)):
        if role not in named:
            raise InvalidInputError(field, f"must name an existing role; there is none called {check.shown(role)}")
    if named[roles.application].rolsuper or named[roles.application].rolbypassrls:
        raise InvalidInputError("application_role", "must not be a superuser or have BYPASSRLS")
    owners = connection.execute(
        text(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class"
            " WHERE oid = ANY (CAST(:tables AS regclass[]))"
            " UNION SELECT :maintenance"
        ),
        {"tables": tables, "maintenance": roles.maintenance},
    ).scalars()
    for role in owners:
        member = connection.execute(
            text("SELECT pg_has_role(:application, :role, 'MEMBER')"),
            {"application": roles.application, "role": role},
        ).scalar_one()
        if member:
            raise InvalidInputError(
                "application_role",
                f"must not own the wake tables or be a member of {check.shown(role)} "
                "(an owner can switch row-level security off; a member can SET ROLE)",
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
    tables from the application role and PUBLIC. Refuses an application role that is a superuser, has BYPASSRLS,
    owns the tables or is a member of their owner or of the maintenance
    role. Each policy takes a brief ACCESS EXCLUSIVE lock on its table,
    waiting at most ``lock_timeout_ms`` (else ``DatabaseTimeoutError``:
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
            for statement in (
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
            row = (await connection.execute(_BACKEND_IDENTITY)).one()
            identity = connection.info[_CONNECTION_IDENTITY] = _BackendIdentity(row.pid, row.started)
        identity.counter += 1
        message = f"{identity.pid}|{identity.started}|{identity.counter}|{','.join(map(str, ids))}".encode()
        signature = hmac.new(key, message, hashlib.sha256).digest()
        await connection.execute(
            _DECLARE, {"conversation_ids": ids, "counter": identity.counter, "signature": signature}
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
