"""The partition guard: refuse, before it runs, any statement on the wake
tables that is not confined to given conversations.

The repositories already scope every query; the guard is the second
defence, for code that does not go through them. It hooks an engine's
``before_cursor_execute`` event, so it sees the SQL actually sent (ORM
queries, flushes, bulk UPDATE/DELETE, Core and ``text()`` alike), and hands
it to :mod:`agent_wake._scope_analysis`, whose docstring states the rules:
in short, every reference to a wake table must pin ``conversation_id`` to
given values in its WHERE clause, and what cannot be checked is refused.
The wake tables, the partition column and the constraints that contain it
are read once from :mod:`agent_wake.models`.

Cross-partition work runs inside :func:`spans_partitions`, with a reason
that is logged at DEBUG with the statement. Decisions are cached by
statement text, so a repeated statement costs a dictionary lookup.
"""

import logging
import warnings
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final, Literal
from weakref import WeakKeyDictionary

from sqlalchemy import Engine, PrimaryKeyConstraint, Table, UniqueConstraint, event
from sqlalchemy.engine.interfaces import DBAPICursor, ExecutionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_wake import _scope_analysis
from agent_wake.errors import InvalidInputError, PartitionScopeError
from agent_wake.models import PARTITION_COLUMN, WAKE_TABLES

__all__ = [
    "GUARDED_TABLES",
    "GuardMode",
    "PartitionSpan",
    "install_partition_guard",
    "spans_partitions",
]

# The execution option that carries a spans_partitions reason.
_SPAN_OPTION: Final = "agent_wake_spans_partitions"
_GUARD_MODES: Final = ("raise", "warn", "off")
_READABLE_PARAMSTYLE: Final = "numeric_dollar"

GuardMode = Literal["raise", "warn", "off"]

_logger = logging.getLogger(__name__)
# The reasons of the spans entered in this context, innermost last. A stack
# in the context (not tokens on the span) lets one span object be entered
# by several tasks at once.
_open_spans: ContextVar[tuple[str, ...]] = ContextVar("agent_wake_partition_spans", default=())
_installed: "WeakKeyDictionary[Engine, _Guard]" = WeakKeyDictionary()


def _scope_rules(tables: tuple[Table, ...], partition_column: str) -> _scope_analysis.ScopeRules:
    """The rules that guard ``tables``: their names, and their primary keys
    and unique constraints that contain ``partition_column`` (the safe
    ``ON CONFLICT ON CONSTRAINT`` targets)."""
    return _scope_analysis.ScopeRules(
        tables=frozenset(table.name for table in tables),
        partition_column=partition_column,
        partitioned_constraints=frozenset(
            str(constraint.name)
            for table in tables
            for constraint in table.constraints
            if isinstance(constraint, PrimaryKeyConstraint | UniqueConstraint)
            and isinstance(constraint.name, str)
            and partition_column in {column.name for column in constraint.columns}
        ),
    )


# Built once at import: the models are the one list of what to guard.
_RULES: Final = _scope_rules(WAKE_TABLES, PARTITION_COLUMN)
GUARDED_TABLES: Final = _RULES.tables


def _refusal(statement: str) -> _scope_analysis.Refusal | None:
    """The guard's decision on ``statement``, under the rules of the models."""
    return _scope_analysis.refusal(statement, _RULES)


class PartitionSpan(Mapping[str, str]):
    """A named permission to run cross-partition statements.

    Use it as a context manager (every statement inside is allowed) or as
    execution options (that statement only)::

        with spans_partitions("tick: scan due schedules"):
            ...
        select(WakeSchedule).execution_options(**spans_partitions("tick: scan"))
    """

    def __init__(self, reason: str) -> None:
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidInputError("reason", "a cross-partition scope needs a non-empty reason")
        self.reason = reason

    def __getitem__(self, key: str) -> str:
        if key != _SPAN_OPTION:
            raise KeyError(key)
        return self.reason

    def __iter__(self) -> Iterator[str]:
        return iter((_SPAN_OPTION,))

    def __len__(self) -> int:
        return 1

    def __enter__(self) -> "PartitionSpan":
        _open_spans.set((*_open_spans.get(), self.reason))
        return self

    def __exit__(self, *exc_info: object) -> None:
        _open_spans.set(_open_spans.get()[:-1])

    def __repr__(self) -> str:
        return f"spans_partitions({self.reason!r})"


def spans_partitions(reason: str) -> PartitionSpan:
    """Allow cross-partition statements, for ``reason`` (required, logged at DEBUG)."""
    return PartitionSpan(reason)


@dataclass
class _Guard:
    mode: GuardMode

    def before_cursor_execute(
        self,
        conn: Any,
        cursor: DBAPICursor,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        if self.mode == "off":
            return
        open_spans = _open_spans.get()
        reason = open_spans[-1] if open_spans else None
        if reason is None and context is not None:
            option = context.execution_options.get(_SPAN_OPTION)
            # Only a real reason opens a span: an empty option is no permission.
            reason = option if isinstance(option, str) and option.strip() else None
        if reason is not None:
            _logger.debug("cross-partition statement (%s): %s", reason, statement)
            return
        refusal = _refusal(statement)
        if refusal is None:
            return
        error = PartitionScopeError(refusal.table, refusal.problem, statement)
        if self.mode == "raise":
            raise error
        _logger.warning("%s", error)
        warnings.warn(str(error), RuntimeWarning, stacklevel=2)


def install_partition_guard(engine: Engine | AsyncEngine, *, mode: GuardMode = "raise") -> None:
    """Check every statement ``engine`` sends; see the module docstring for the rules.

    ``mode`` is ``"raise"`` (refuse with :class:`PartitionScopeError`
    before anything is sent), ``"warn"`` (log a warning and run it) or
    ``"off"``. Installing again on the same engine changes its mode.
    """
    if mode not in _GUARD_MODES:
        raise InvalidInputError("mode", f"must be one of {', '.join(_GUARD_MODES)}")
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if not isinstance(sync_engine, Engine):
        raise InvalidInputError("engine", "must be a SQLAlchemy Engine or AsyncEngine")
    if sync_engine.dialect.name != "postgresql" or sync_engine.dialect.paramstyle != _READABLE_PARAMSTYLE:
        # Other drivers send %s or :name placeholders, which PostgreSQL's
        # parser cannot read: every statement on a wake table would be refused.
        raise InvalidInputError(
            "engine",
            "the guard reads the SQL of the asyncpg dialect (postgresql+asyncpg, $n placeholders); "
            f"this engine uses {sync_engine.dialect.name}+{sync_engine.dialect.driver} "
            f"with paramstyle {sync_engine.dialect.paramstyle!r}",
        )
    guard = _installed.get(sync_engine)
    if guard is not None:
        guard.mode = mode
        return
    guard = _Guard(mode)
    _installed[sync_engine] = guard
    event.listen(sync_engine, "before_cursor_execute", guard.before_cursor_execute)
