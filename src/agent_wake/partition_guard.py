"""The partition guard: refuse, before it runs, any statement on the wake
tables that is not confined to given conversations.

The repositories already scope every query; the guard is the second
defence, against a programming mistake in code that does not go through
them (it is no defence against SQL written by someone hostile: see the
README's threat model). It hooks an engine's ``before_cursor_execute``
event, so it sees the SQL actually sent (ORM queries, flushes, bulk
UPDATE/DELETE, Core and ``text()`` alike), and hands it to
:mod:`agent_wake._scope_analysis`, whose docstring states the rules: in
short, every reference to a wake table must pin ``conversation_id`` to
given values in its WHERE clause, and what cannot be checked is refused.
The wake tables, the partition column and the constraints that contain it
are read once from :mod:`agent_wake.models`.

The analysis reads the text as the server does while the connection's
``standard_conforming_strings`` is ``on`` and its ``client_encoding`` is
``UTF8``. A statement whose reading could depend on them (a backslash or a
character outside ASCII in its text) is refused while the connection
reports anything else, inside a span too: the server would read it
otherwise, and would reuse that reading for the same text later. The
values are the ones PostgreSQL reports to the driver whenever they change,
so no way of changing them (SET, SET LOCAL, RESET, ``set_config()``,
``ALTER ROLE/DATABASE ... SET``, connection options) gets past.

Cross-partition work runs inside :func:`spans_partitions`, with a reason
that is logged at DEBUG with the statement. A span covers the statements
the code inside its ``with`` block sends, in the task (or, outside
asyncio, the thread) that entered it, and nothing else: not a task created
inside the block, which gets a copy of the context but not the span, and
not the caller of a generator suspended at a ``yield`` inside the block.
Spans nest; leaving one that is not the innermost open span of the task is
an error. Decisions are cached by statement text, so a repeated statement
costs a dictionary lookup.
"""

import asyncio
import inspect
import logging
import sys
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import FrameType
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
# The settings under which the server reads SQL text as pglast does.
_STANDARD_READING: Final = {"standard_conforming_strings": "on", "client_encoding": "UTF8"}
_GENERATOR_CODE: Final = inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR

GuardMode = Literal["raise", "warn", "off"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class _OpenSpan:
    """One entry into a span: by whom, and from which frame."""

    span: "PartitionSpan"
    owner: object  # the asyncio task, else the thread
    # The frame of the with statement when it is a generator's: the span
    # holds only while that frame runs, not while it is suspended at a yield.
    generator_frame: FrameType | None


# The spans entered in this context, innermost last. A stack in the context
# (not tokens on the span) lets one span object be entered by several tasks
# at once; a task created inside a span copies the stack, and the owner of
# each entry tells that the copy is not its own.
_open_spans: ContextVar[tuple[_OpenSpan, ...]] = ContextVar("agent_wake_partition_spans", default=())
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
    return _scope_analysis.decide(statement, _RULES).refusal


def span_reason(execution_options: Mapping[str, Any]) -> str | None:
    """The reason of the span these execution options carry (``**spans_partitions(...)``), if any."""
    reason = execution_options.get(_SPAN_OPTION)
    return reason if isinstance(reason, str) and reason.strip() else None


def open_span_options() -> Mapping[str, str]:
    """The execution options of the span open in this task, if any (``{}`` else)."""
    reason = _open_span_reason()
    return spans_partitions(reason) if reason is not None else {}


class PartitionSpan(Mapping[str, str]):
    """A named permission to run cross-partition statements.

    Use it as a context manager (every statement the block sends from the
    task that entered it is allowed; see the module docstring) or as
    execution options (that statement only)::

        with spans_partitions("tick: scan due schedules"):
            ...
        select(WakeSchedule).execution_options(**spans_partitions("tick: scan"))

    Leaving it when it is not the innermost span that the current task (or
    thread) entered raises ``RuntimeError``: spans nest.
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
        frame = sys._getframe(1)
        generator_frame = frame if frame.f_code.co_flags & _GENERATOR_CODE else None
        _open_spans.set((*_open_spans.get(), _OpenSpan(self, _current_owner(), generator_frame)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        entries = _open_spans.get()
        if not entries or entries[-1].span is not self or entries[-1].owner is not _current_owner():
            raise RuntimeError(
                f"{self!r} is not the innermost span this task entered: spans must be left in the "
                "reverse order they were entered, by the task that entered them"
            )
        _open_spans.set(entries[:-1])

    def __repr__(self) -> str:
        return f"spans_partitions({self.reason!r})"


def spans_partitions(reason: str) -> PartitionSpan:
    """Allow cross-partition statements, for ``reason`` (required, logged at DEBUG).

    As a context manager, the span covers what the code inside the ``with``
    block sends from the task that entered it; see the module docstring for
    what it does not cover. To hand a span to a helper, return it rather
    than yield inside it.
    """
    return PartitionSpan(reason)


def _current_owner() -> object:
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop runs in this thread
        task = None
    return task if task is not None else threading.current_thread()


def _open_span_reason() -> str | None:
    """The reason of the innermost span that covers the code running now, or None."""
    entries = _open_spans.get()
    if not entries:
        return None
    owner = _current_owner()
    for entry in reversed(entries):
        # A suspended frame has no caller: the code running now is not inside its with block.
        suspended = entry.generator_frame is not None and entry.generator_frame.f_back is None
        if entry.owner is owner and not suspended:
            return entry.span.reason
    return None


def _settings_refusal(connection: Any) -> _scope_analysis.Refusal | None:
    """The refusal of a statement whose reading depends on the settings, when
    the server last reported, on ``connection`` (a SQLAlchemy ``Connection``
    on asyncpg), a setting under which it reads SQL text otherwise than
    pglast; else None. Costs no round trip: asyncpg keeps what the server reports."""
    settings = connection.connection.driver_connection.get_settings()
    for name, expected in _STANDARD_READING.items():
        value = getattr(settings, name, None)
        if value != expected:
            return _scope_analysis.Refusal(
                "(any)",
                f"the connection's {name} is {value!r}, not {expected!r}: the server would read this text "
                "(it holds a backslash or a character outside ASCII) otherwise than the guard; "
                "restore the setting first",
            )
    return None


class LibraryListener(ABC):
    """A ``before_cursor_execute`` listener agent-wake installs (the guard, ``capture_sql``'s
    recorder), registered with ``retval=True``. It reads only the statement and, when there is
    one, the execution context's options: it can be shown a statement the library sends on the
    driver connection itself, with no cursor and no context. Listeners of others (tracing, APM)
    may need both, so the library sends through SQLAlchemy when an engine has any.
    """

    @abstractmethod
    def __call__(
        self,
        conn: Any,
        cursor: DBAPICursor | None,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> tuple[str, Any]: ...


@dataclass(eq=False)  # registered as a listener: hashed by identity
class _Guard(LibraryListener):
    mode: GuardMode

    def __call__(
        self,
        conn: Any,
        cursor: DBAPICursor | None,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> tuple[str, Any]:
        self._check(conn, statement, context)
        return statement, parameters

    def _check(self, conn: Any, statement: str, context: ExecutionContext | None) -> None:
        if self.mode == "off":
            return
        decision = _scope_analysis.decide(statement, _RULES)
        refusal = None
        # Most statements (the repositories' all) read alike under any
        # settings, and skip asking the driver (~2 us).
        if decision.reading_depends_on_settings:
            refusal = _settings_refusal(conn)
        if refusal is None:
            reason = _open_span_reason()
            if reason is None and context is not None:
                option = context.execution_options.get(_SPAN_OPTION)
                # Only a real reason opens a span: an empty option is no permission.
                reason = option if isinstance(option, str) and option.strip() else None
            if reason is not None:
                _logger.debug("cross-partition statement (%s): %s", reason, statement)
                return
            refusal = decision.refusal
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
    event.listen(sync_engine, "before_cursor_execute", guard, retval=True)
