"""The SQL an engine, connection or session actually sends, for tests that
pin a hot query's text or check what reached the driver::

    with capture_sql(engine) as captured:
        await repository.get(conversation_id, schedule_id)
    assert [statement.sql for statement in captured] == [EXPECTED_GET]

Statements are recorded at ``before_cursor_execute``: the text as the
driver receives it (``$1`` placeholders with asyncpg). The dialect's own
queries when a connection is first made are not among them.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine.interfaces import DBAPICursor, ExecutionContext
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from agent_wake.errors import InvalidInputError
from agent_wake.partition_guard import LibraryListener, open_span_options

__all__ = ["CapturedStatement", "capture_sql"]


@dataclass(frozen=True)
class CapturedStatement:
    """One statement sent to the driver.

    ``parameters`` are as the driver gets them: a tuple for one execution with
    asyncpg, a sequence of them for an executemany. ``execution_options`` are
    the statement's merged execution options (where the partition guard reads
    a ``spans_partitions`` reason).
    """

    sql: str
    parameters: Any
    execution_options: Mapping[str, Any]


def _listened(target: Engine | AsyncEngine | Connection | AsyncConnection | AsyncSession) -> Engine | Connection:
    if isinstance(target, Engine | Connection):
        return target
    if isinstance(target, AsyncEngine):
        return target.sync_engine
    if isinstance(target, AsyncConnection):
        if target.sync_connection is None:
            raise InvalidInputError("target", "an AsyncConnection must be connected before its SQL is captured")
        return target.sync_connection
    if isinstance(target, AsyncSession):
        bind = target.sync_session.get_bind()
        if not isinstance(bind, Engine | Connection):
            raise InvalidInputError("target", "the session must be bound to one engine or connection")
        return bind
    raise InvalidInputError("target", "must be an Engine, AsyncEngine, Connection, AsyncConnection or AsyncSession")


@contextmanager
def capture_sql(
    target: Engine | AsyncEngine | Connection | AsyncConnection | AsyncSession,
) -> Iterator[list[CapturedStatement]]:
    """Record every statement sent through ``target`` inside the block, in order.

    An engine records all its connections' statements; a connection only its
    own; an ``AsyncSession`` the connection it is bound to (as the plugin's
    ``wake_session`` is), else its engine, so then another session on that
    engine is recorded too. The listener is removed at exit, even on error;
    the list stays readable afterwards.

    Refuses (``InvalidInputError``) another kind of target, an
    ``AsyncConnection`` not yet started, and a session without one bind.
    Costs one append per statement; no round trip.
    """
    listened = _listened(target)
    recorder = _Recorder()
    event.listen(listened, "before_cursor_execute", recorder, retval=True)
    try:
        yield recorder.captured
    finally:
        event.remove(listened, "before_cursor_execute", recorder)


class _Recorder(LibraryListener):
    def __init__(self) -> None:
        self.captured: list[CapturedStatement] = []

    def __call__(
        self,
        conn: Any,
        cursor: DBAPICursor | None,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> tuple[str, Any]:
        # A statement the library sends on the driver itself (the tick's) comes with no
        # context: its span, if any, is the one open around it.
        options = context.execution_options if context is not None else open_span_options()
        self.captured.append(CapturedStatement(statement, parameters, options))
        return statement, parameters
