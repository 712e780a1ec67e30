"""The package's errors, under one base class, and the translation of
database errors into them.

A caller branches on three families, never on a message:

- :class:`InvalidInputError`: the arguments break a rule; fix them, do not retry;
- :class:`ConflictError`: the database holds something this write
  contradicts (a duplicate, a status that forbids the change); re-read and decide;
- :class:`RetryableError`: the transaction lost a race or its connection
  (serialization failure, deadlock, timeout, lost connection); roll back and
  run it again.

:class:`TransactionAbortedError` says an earlier statement of the same
transaction failed (PostgreSQL refuses everything after it): roll back first.

Repositories validate before any SQL runs; what still reaches the database
and fails there is turned into these errors by
:func:`translate_database_errors`, classified by SQLSTATE and the driver's
constraint name. No message repeats a value the caller sent, so a secret
cannot leak through one.
"""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Final

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.sql.schema import ColumnCollectionConstraint

__all__ = [
    "AgentWakeError",
    "AmbiguousIdError",
    "ConflictError",
    "ConnectionLostError",
    "ConstraintViolationError",
    "DatabaseError",
    "DatabaseTimeoutError",
    "DuplicateError",
    "InvalidInputError",
    "NotFoundError",
    "PartitionScopeError",
    "RetryableError",
    "SecretDecryptionError",
    "SerializationError",
    "StatusConflictError",
    "TransactionAbortedError",
    "first_line",
    "translate_database_errors",
]


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (a driver's message goes on with DETAIL and HINT lines),
    or its class name when it has none."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class AgentWakeError(Exception):
    """Base class of every error agent-wake raises.

    ``sqlstate`` is the PostgreSQL error code when the database raised it,
    else ``None``.
    """

    sqlstate: str | None = None


class InvalidInputError(AgentWakeError, ValueError):
    """An argument breaks a rule; ``field`` names it and ``rule`` says the rule."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class ConstraintViolationError(InvalidInputError):
    """The database refused a value: a foreign key, CHECK or NOT NULL constraint.

    ``field`` names the column (columns, comma-separated, for a constraint
    over several), ``rule`` and ``constraint`` the constraint, ``table`` its table.
    """

    def __init__(self, *, table: str, constraint: str, columns: str, explanation: str, sqlstate: str) -> None:
        super().__init__(columns, constraint)
        self.args = (f"{columns}: {explanation} (constraint {constraint} on {table})",)
        self.table = table
        self.constraint = constraint
        self.sqlstate = sqlstate


class NotFoundError(AgentWakeError, LookupError):
    """No row with this id exists in this conversation."""

    def __init__(self, entity: str, conversation_id: object, entity_id: object) -> None:
        super().__init__(f"{entity} {entity_id} not found in conversation {conversation_id}")
        self.entity = entity
        self.conversation_id = conversation_id
        self.entity_id = entity_id


class ConflictError(AgentWakeError):
    """The database holds a row that this write would duplicate or contradict."""


class DuplicateError(ConflictError):
    """A unique constraint already holds this key; ``table`` and ``constraint`` name it."""

    def __init__(self, *, table: str, constraint: str, sqlstate: str) -> None:
        super().__init__(f"{table}: a row already exists (unique constraint {constraint})")
        self.table = table
        self.constraint = constraint
        self.sqlstate = sqlstate


class StatusConflictError(ConflictError):
    """The row's stored ``status`` forbids the change (resuming an expired schedule, ...)."""

    def __init__(self, *, entity: str, entity_id: object, action: str, status: str) -> None:
        super().__init__(f"cannot {action} {entity} {entity_id}: its status is {status!r}")
        self.entity = entity
        self.entity_id = entity_id
        self.action = action
        self.status = status


class AmbiguousIdError(ConflictError, LookupError):
    """A lookup by bare id found rows of more than one conversation; ``entity`` and ``entity_id``
    name what was looked up, ``conversation_ids`` the conversations found holding it (two: the
    lookup reads no more).

    Only the re-keyed layout (:mod:`agent_wake.distribution`) can hold such rows: it keeps ids
    unique per conversation, not on their own. Look the row up by (conversation_id, id) instead.
    """

    def __init__(self, *, entity: str, entity_id: object, conversation_ids: tuple[uuid.UUID, ...]) -> None:
        super().__init__(
            f"{entity} {entity_id} exists in more than one conversation: "
            "a lookup by this id alone cannot tell which one is meant"
        )
        self.entity = entity
        self.entity_id = entity_id
        self.conversation_ids = conversation_ids


class RetryableError(AgentWakeError):
    """The transaction failed through no fault of its arguments: roll back and run it again."""

    def __init__(self, message: str, *, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class SerializationError(RetryableError):
    """A concurrent transaction changed the same rows (serialization failure or deadlock)."""


class DatabaseTimeoutError(RetryableError):
    """A statement or lock timeout, or no pooled connection in time."""


class ConnectionLostError(RetryableError):
    """The connection to the database broke or could not be made."""


class TransactionAbortedError(AgentWakeError):
    """An earlier statement of this transaction failed, so PostgreSQL refuses the rest of it:
    roll back (or to a savepoint), then run what is still needed again."""

    def __init__(self, *, sqlstate: str | None) -> None:
        super().__init__("an earlier statement of this transaction failed; roll back before going on")
        self.sqlstate = sqlstate


class DatabaseError(AgentWakeError):
    """Any other database failure; ``sqlstate`` says which (the driver error is the cause)."""

    def __init__(self, message: str, *, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class RowSecurityError(DatabaseError):
    """PostgreSQL's row-level security refused the statement (SQLSTATE 42501).

    A row outside the conversations this transaction declared was to be
    written, or a declaration was refused (bad signature, a counter used
    before, no key installed), or the role lacks the privilege. Nothing was
    written by the statement; roll back.
    """


class PartitionScopeError(AgentWakeError):
    """A statement on a wake table is not confined to given conversations.

    Raised by the partition guard before the statement reaches the
    database; nothing was executed.
    """

    def __init__(self, table: str, problem: str, sql: str) -> None:
        super().__init__(f"refused a statement on {table}: {problem}\nSQL: {sql}")
        self.table = table
        self.problem = problem
        self.sql = sql


class SecretDecryptionError(AgentWakeError):
    """A stored secret cannot be decrypted with any of the configured keys.

    ``conversation_id`` and ``subscription_id`` name the subscription whose
    secret it is when the code that read it knows (a key rotation), else ``None``.
    """

    def __init__(
        self, message: str, *, conversation_id: uuid.UUID | None = None, subscription_id: uuid.UUID | None = None
    ) -> None:
        super().__init__(message)
        self.conversation_id = conversation_id
        self.subscription_id = subscription_id


_UNIQUE_VIOLATION: Final = "23505"
_CONSTRAINT_EXPLANATIONS: Final = {
    "23503": "refers to a row that does not exist",
    "23514": "breaks a check constraint",
    "23502": "must not be null",
}
_SERIALIZATION: Final = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
_TIMEOUTS: Final = frozenset({"57014", "55P03"})  # query_canceled (statement_timeout), lock_not_available
# The server shutting the session down; connection_exception (08xxx) is matched by its class.
_CONNECTION_LOST: Final = frozenset({"57P01", "57P02", "57P03"})
_IN_FAILED_TRANSACTION: Final = "25P02"
_INSUFFICIENT_PRIVILEGE: Final = "42501"


@cache
def _constraint_columns() -> dict[tuple[str, str], tuple[str, ...]]:
    """(table, constraint) -> the columns it covers, for every named constraint of the wake tables.

    A CHECK constraint written as text names its columns in ``info["columns"]``.
    """
    from agent_wake.models import WAKE_TABLES  # the models import nothing of this module's users

    return {
        (table.name, constraint.name): tuple(
            constraint.info.get("columns") or (column.name for column in constraint.columns)
        )
        for table in WAKE_TABLES
        for constraint in table.constraints
        if isinstance(constraint.name, str) and isinstance(constraint, ColumnCollectionConstraint)
    }


def _constraint_error(driver_error: BaseException | None, sqlstate: str) -> AgentWakeError:
    table = getattr(driver_error, "table_name", None) or "unknown table"
    constraint = getattr(driver_error, "constraint_name", None) or "unknown constraint"
    if sqlstate == _UNIQUE_VIOLATION:
        return DuplicateError(table=table, constraint=constraint, sqlstate=sqlstate)
    column = getattr(driver_error, "column_name", None)
    columns = (column,) if column else _constraint_columns().get((table, constraint), ("unknown column",))
    if sqlstate == "23502":
        constraint = f"{table}.{columns[0]} NOT NULL"
    return ConstraintViolationError(
        table=table,
        constraint=constraint,
        columns=", ".join(columns),
        explanation=_CONSTRAINT_EXPLANATIONS[sqlstate],
        sqlstate=sqlstate,
    )


def _translated(exc: sa_exc.DBAPIError) -> AgentWakeError:
    sqlstate = getattr(exc.driver_exception, "sqlstate", None) or getattr(exc.orig, "sqlstate", None)
    return _classified(sqlstate, exc.driver_exception, lost=exc.connection_invalidated)


def _classified(sqlstate: object, driver_error: BaseException | None, *, lost: bool) -> AgentWakeError:
    if (isinstance(sqlstate, str) and sqlstate in _CONSTRAINT_EXPLANATIONS) or sqlstate == _UNIQUE_VIOLATION:
        return _constraint_error(driver_error, sqlstate)
    if sqlstate == _IN_FAILED_TRANSACTION:
        return TransactionAbortedError(sqlstate=sqlstate)
    if sqlstate in _SERIALIZATION:
        return SerializationError(
            "a concurrent transaction changed the same rows; roll back and retry", sqlstate=sqlstate
        )
    if sqlstate in _TIMEOUTS:
        return DatabaseTimeoutError(
            "the statement ran past statement_timeout or waited past lock_timeout; roll back and retry",
            sqlstate=sqlstate,
        )
    if sqlstate == _INSUFFICIENT_PRIVILEGE:
        # The server's message names the table or the declaration rule, never a value.
        reason = str(getattr(driver_error, "message", "") or "insufficient privilege")
        return RowSecurityError(f"the database refused the statement: {reason}", sqlstate=sqlstate)
    if lost or sqlstate in _CONNECTION_LOST or (isinstance(sqlstate, str) and sqlstate.startswith("08")):
        return ConnectionLostError(
            "the connection to the database was lost; roll back and retry on a new one",
            sqlstate=sqlstate if isinstance(sqlstate, str) else None,
        )
    return DatabaseError(
        f"the database refused the statement ({type(driver_error).__name__}, SQLSTATE {sqlstate})",
        sqlstate=sqlstate if isinstance(sqlstate, str) else None,
    )


@contextmanager
def translate_database_errors() -> Iterator[None]:
    """Raise any database failure inside the block as an :class:`AgentWakeError`.

    Agent-wake errors (the partition guard's) pass through; the driver
    error stays chained as the cause. The statement's parameters are never
    put in a message.
    """
    try:
        yield
    except AgentWakeError:
        raise
    except sa_exc.DBAPIError as exc:
        raise _translated(exc) from exc
    except asyncpg.PostgresError as exc:  # a statement sent on the driver connection itself (the tick)
        raise _classified(exc.sqlstate, exc, lost=False) from exc
    except (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError) as exc:  # the driver's own state
        raise _classified(None, exc, lost="connection is closed" in str(exc)) from exc
    except sa_exc.PendingRollbackError as exc:  # the session saw an earlier failure of this transaction
        raise TransactionAbortedError(sqlstate=None) from exc
    except sa_exc.TimeoutError as exc:  # the pool had no connection in time
        raise DatabaseTimeoutError(str(exc), sqlstate=None) from exc
    except OSError as exc:  # a connection that could not be opened at all
        raise ConnectionLostError(f"could not reach the database ({type(exc).__name__})", sqlstate=None) from exc
