"""Test support for code built on agent-wake, used by a downstream service's
test suite and by our own (tests and benchmarks):

- :class:`ScratchDatabase`, :class:`ScratchDatabases`: uniquely named
  databases created on a PostgreSQL server, migrated, and dropped;
  :func:`execute_autocommit` and :func:`migrate_to_head` beneath them;
  :func:`drop_abandoned_databases`, the leftovers of killed runs;
- :func:`capture_sql`: the statements an engine, connection or session sends;
- :class:`WakeFactory`: valid, persisted rows with overrides, and the
  :class:`RowBuilder` protocol of the upstream rows it writes.

The pytest plugin (the ``wake_*`` fixtures) is
:mod:`agent_wake.testing.pytest_plugin`, registered by the ``pytest11``
entry point; it is not imported here, so this package does not need pytest.
"""

from agent_wake.testing.databases import (
    ScratchDatabase,
    ScratchDatabases,
    drop_abandoned_databases,
    execute_autocommit,
    migrate_to_head,
)
from agent_wake.testing.factories import RowBuilder, WakeFactory, build_standin_conversation, build_standin_skill
from agent_wake.testing.sql_capture import CapturedStatement, capture_sql

__all__ = [
    "CapturedStatement",
    "RowBuilder",
    "ScratchDatabase",
    "ScratchDatabases",
    "WakeFactory",
    "build_standin_conversation",
    "build_standin_skill",
    "capture_sql",
    "drop_abandoned_databases",
    "execute_autocommit",
    "migrate_to_head",
]
