"""Our own suite runs on the fixtures of agent-wake's pytest plugin
(`wake_session`, `wake_engine`, `wake_factory`, ...), as a downstream
project would; this file adds only what the migration tests need."""

from collections.abc import AsyncIterator

import pytest

from agent_wake.testing import ScratchDatabases
from agent_wake.testing.pytest_plugin import TestServer

# The migration tests import ScratchDatabases from here for their annotations.
__all__ = ["ScratchDatabases", "scratch_databases"]


@pytest.fixture
async def scratch_databases(wake_server: TestServer) -> AsyncIterator[ScratchDatabases]:
    """Empty databases on the test server, made on demand; the migration tests run Alembic on them."""
    databases = ScratchDatabases(wake_server.url, migrate=None)
    yield databases
    await databases.drop_all()
