"""The package's errors, under one base class, and the translation of
database errors into them.

Repositories validate before any SQL runs; what still reaches the database
and is refused there (a CHECK, foreign-key or unique violation) is turned
into the same errors by :func:`translate_database_errors`, naming the
constraint, so no raw driver error leaks to callers.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import exc as sa_exc

__all__ = [
    "AgentWakeError",
    "ConflictError",
    "InvalidInputError",
    "NotFoundError",
    "PartitionScopeError",
    "SecretDecryptionError",
    "translate_database_errors",
]


class AgentWakeError(Exception):
    """Base class of every error agent-wake raises."""


class InvalidInputError(AgentWakeError, ValueError):
    """An argument breaks a rule; ``field`` names it and the message says the rule."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class NotFoundError(AgentWakeError, LookupError):
    """No row with this id exists in this conversation."""


class ConflictError(AgentWakeError):
    """The database already holds a row that this write would duplicate or contradict."""


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
    """A stored secret cannot be decrypted with any of the configured keys."""


_UNIQUE_VIOLATION = "23505"
_FOREIGN_KEY_VIOLATION = "23503"
_CHECK_VIOLATION = "23514"
_NOT_NULL_VIOLATION = "23502"
# Lost a race with another transaction (REPEATABLE READ / SERIALIZABLE, or a deadlock).
_RETRYABLE = frozenset({"40001", "40P01"})


def _driver_error(exc: sa_exc.DBAPIError) -> Any:
    # SQLAlchemy's asyncpg adapter keeps the asyncpg exception as the cause;
    # it carries the constraint and column names.
    return exc.orig.__cause__ if exc.orig is not None else None


@contextmanager
def translate_database_errors() -> Iterator[None]:
    """Turn integrity errors raised inside the block into agent-wake errors.

    A unique violation, a serialization failure and a deadlock become
    :class:`ConflictError`; CHECK, foreign-key and NOT NULL violations
    become :class:`InvalidInputError` naming the constraint or column. The
    driver error stays chained as the cause. The statement's values are not
    repeated in the message, so a secret cannot leak through it.
    """
    try:
        yield
    except sa_exc.DBAPIError as exc:
        if not isinstance(exc, sa_exc.IntegrityError):
            if getattr(exc.orig, "sqlstate", None) in _RETRYABLE:
                raise ConflictError("a concurrent transaction changed the same rows; roll back and retry") from exc
            raise
        sqlstate = getattr(exc.orig, "sqlstate", None)
        driver_error = _driver_error(exc)
        constraint = getattr(driver_error, "constraint_name", None) or "unknown constraint"
        table = getattr(driver_error, "table_name", None) or "unknown table"
        if sqlstate == _UNIQUE_VIOLATION:
            raise ConflictError(f"{table}: a row already exists (unique constraint {constraint})") from exc
        if sqlstate == _FOREIGN_KEY_VIOLATION:
            raise InvalidInputError(constraint, f"refers to a row that does not exist ({table})") from exc
        if sqlstate == _CHECK_VIOLATION:
            raise InvalidInputError(constraint, f"check constraint on {table} failed") from exc
        if sqlstate == _NOT_NULL_VIOLATION:
            column = getattr(driver_error, "column_name", None) or "unknown column"
            raise InvalidInputError(column, f"must not be null ({table})") from exc
        raise AgentWakeError(f"{table}: integrity error {sqlstate}") from exc
