"""Our own suite runs on the fixtures of agent-wake's pytest plugin
(`wake_session`, `wake_engine`, `wake_factory`, ...), as a downstream
project would; this file adds only what the migration tests need."""

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import make_url

from agent_wake.pytest_plugin import TestServer, _execute_autocommit


class ScratchDatabases:
    """Creates empty databases on the test server and drops them at the end."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.names: list[str] = []

    async def create(self) -> str:
        name = f"agent_wake_scratch_{uuid.uuid4().hex[:12]}"
        await _execute_autocommit(self.server, f'CREATE DATABASE "{name}"')
        self.names.append(name)
        return make_url(self.server).set(database=name).render_as_string(hide_password=False)

    async def drop_all(self) -> None:
        for name in self.names:
            await _execute_autocommit(self.server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def scratch_databases(wake_server: TestServer) -> AsyncIterator[ScratchDatabases]:
    databases = ScratchDatabases(wake_server.url)
    yield databases
    await databases.drop_all()
