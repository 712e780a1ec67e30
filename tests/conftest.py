"""Our own suite runs on the fixtures of agent-wake's pytest plugin
(`wake_session`, `wake_engine`, `wake_factory`, ...), as a downstream
project would; this file adds only what the migration tests need."""

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_wake.testing import ScratchDatabases
from agent_wake.testing.pytest_plugin import TestServer

# The migration tests import ScratchDatabases from here for their annotations.
__all__ = ["ScratchDatabases", "scratch_databases"]

# The projects that pytester runs in /tmp/pytest-of-root would otherwise each
# start an embedded server in a folder of their own there, which every pytest
# session that starts closes again (chmod 700) under the server's feet: they
# share the checkout's server instead, as this session does.
os.environ.setdefault("AGENT_WAKE_EMBEDDED_DIR", str(Path(__file__).resolve().parent.parent / ".agent-wake" / "pgdata"))


@pytest.fixture
async def scratch_databases(wake_server: TestServer) -> AsyncIterator[ScratchDatabases]:
    """Empty databases on the test server, made on demand; the migration tests run Alembic on them."""
    databases = ScratchDatabases(wake_server.url, migrate=None)
    yield databases
    await databases.drop_all()
