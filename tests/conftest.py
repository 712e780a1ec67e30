"""Our own suite runs on the fixtures of agent-wake's pytest plugin
(`wake_session`, `wake_engine`, `wake_factory`, ...), as a downstream
project would; this file adds what the migration tests need, and the two
markers of tests that hold on one layout only (``AGENT_WAKE_TEST_LAYOUT``):

- ``reference_layout_only(why)``: the test asserts the reference layout
  itself (a standalone unique id, an ``ON DELETE SET NULL`` the database
  runs); skipped under the distributed layout (re-keyed, at least);
- ``not_on_citus(why)``: Citus, by design, refuses what the test does or
  does not give what it asserts (``why`` names the limitation); skipped
  under the distributed layout when the test server is a Citus coordinator.
"""

import asyncio
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent_wake.database import resolve_database_url
from agent_wake.testing import ScratchDatabases, _citus
from agent_wake.testing.pytest_plugin import TEST_DATABASE_URL_VARIABLE, TEST_LAYOUT_VARIABLE, TestServer

# The migration tests import ScratchDatabases from here for their annotations.
__all__ = ["ScratchDatabases", "scratch_databases"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reference_layout_only(why): skipped under AGENT_WAKE_TEST_LAYOUT=distributed (re-keyed tables)"
    )
    config.addinivalue_line(
        "markers", "not_on_citus(why): a Citus limitation; skipped when the test database is distributed on Citus"
    )


def _test_server_is_a_citus_coordinator() -> bool:
    # The embedded server and the container are plain PostgreSQL: only a server of yours can be Citus.
    configured = os.environ.get(TEST_DATABASE_URL_VARIABLE)
    if not configured:
        return False
    with ThreadPoolExecutor(max_workers=1) as executor:
        nodes = executor.submit(asyncio.run, _citus.citus_nodes(resolve_database_url(configured))).result()
    return nodes is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if (os.environ.get(TEST_LAYOUT_VARIABLE) or "reference") != "distributed":
        return
    on_citus: bool | None = None  # asked of the server once, and only if a collected test is marked
    for item in items:
        if (marker := item.get_closest_marker("reference_layout_only")) is not None:
            item.add_marker(pytest.mark.skip(reason=f"reference layout only: {marker.args[0]}"))
        elif (marker := item.get_closest_marker("not_on_citus")) is not None:
            if on_citus is None:
                on_citus = _test_server_is_a_citus_coordinator()
            if on_citus:
                item.add_marker(pytest.mark.skip(reason=f"not on Citus: {marker.args[0]}"))


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
