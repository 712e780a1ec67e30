"""pytest plugin: a migrated PostgreSQL, a rolled-back session per test,
factories. Installing agent-wake registers it (entry point ``pytest11``).

Fixtures, all named ``wake_*``; nothing starts or connects until a test asks:

- ``wake_database_url`` (session): a fresh database with a unique name,
  migrated once, dropped at the end;
- ``wake_migrate`` (session): how that database is migrated; override it,
  or set the ini option ``agent_wake_alembic_ini``, to use your own Alembic
  environment. It is called with the database URL in a thread with no event
  loop running (see :class:`~agent_wake.testing.databases.ScratchDatabase`);
- ``wake_session``: an ``AsyncSession`` in an outer transaction rolled back
  after the test (savepoints let the code under test call ``commit()``);
- ``wake_engine``: an engine for tests that need their own connections; the
  wake tables are truncated after such a test;
- ``wake_factory``: :class:`~agent_wake.testing.factories.WakeFactory` on ``wake_session``;
- ``wake_secrets``: a :class:`~agent_wake.secret_box.SecretBox` with a key
  made for the test session.

The database server is, in this order: ``AGENT_WAKE_TEST_DATABASE_URL``; a
PostgreSQL container through testcontainers when Docker answers; the
embedded PostgreSQL. Every engine and session handed out has the partition
guard on in ``raise`` mode.
"""

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from agent_wake.database import resolve_database_url, start_embedded_server
from agent_wake.errors import AgentWakeError
from agent_wake.partition_guard import GUARDED_TABLES, install_partition_guard, spans_partitions
from agent_wake.secret_box import SecretBox
from agent_wake.testing import databases
from agent_wake.testing.factories import WakeFactory

__all__ = [
    "ALEMBIC_INI_OPTION",
    "TEST_DATABASE_URL_VARIABLE",
    "TestServer",
    "wake_database_url",
    "wake_engine",
    "wake_factory",
    "wake_migrate",
    "wake_secrets",
    "wake_server",
    "wake_session",
]

TEST_DATABASE_URL_VARIABLE = "AGENT_WAKE_TEST_DATABASE_URL"
ALEMBIC_INI_OPTION = "agent_wake_alembic_ini"
POSTGRES_IMAGE = "postgres:16-alpine"
_TEARDOWN_LOCK_TIMEOUT_SECONDS = 10
_DATABASE_FIXTURES = frozenset(
    {"wake_server", "wake_database_url", "wake_migrate", "wake_session", "wake_engine", "wake_factory"}
)

_T = TypeVar("_T")

try:
    from pytest_asyncio import fixture as async_fixture
except ImportError:  # pytest then reports the async fixtures as unsupported when a test asks
    async_fixture = pytest.fixture  # type: ignore[assignment]


def _run_in_fresh_loop(coroutine: Coroutine[Any, Any, _T]) -> _T:
    # Session setup runs outside whatever loop pytest-asyncio gives the tests,
    # so it works in strict and auto mode and with any loop scope.
    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, coroutine).result()


@dataclass
class TestServer:
    """A PostgreSQL server for the test session: where it came from and its admin URL."""

    __test__ = False  # not a test class, despite its name

    source: str
    url: str
    stop: Callable[[], None] | None = None
    tried: list[str] = field(default_factory=list)


def _from_environment(tried: list[str]) -> TestServer | None:
    configured = os.environ.get(TEST_DATABASE_URL_VARIABLE)
    if not configured:
        tried.append(f"{TEST_DATABASE_URL_VARIABLE}: not set")
        return None
    url = resolve_database_url(configured)
    try:
        _run_in_fresh_loop(databases.execute_autocommit(url, "SELECT 1"))
    except Exception as exc:
        raise AgentWakeError(
            f"{TEST_DATABASE_URL_VARIABLE} is set but its server does not answer ({exc}); "
            "start that server or unset the variable"
        ) from exc
    shown = make_url(url).render_as_string(hide_password=True)
    return TestServer(f"{TEST_DATABASE_URL_VARIABLE} ({shown})", url)


def _from_testcontainers(tried: list[str]) -> TestServer | None:
    try:
        import docker

        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:
            from testcontainers.postgres import PostgresContainer
    except ImportError:
        tried.append("testcontainers: not installed (pip install 'agent-wake[test]')")
        return None
    try:
        docker.from_env(timeout=3).ping()
    except Exception as exc:
        tried.append(f"testcontainers: Docker does not answer ({type(exc).__name__})")
        return None
    container = PostgresContainer(POSTGRES_IMAGE, driver=None)
    try:
        container.start()
    except Exception as exc:
        tried.append(f"testcontainers: could not start {POSTGRES_IMAGE} ({exc})")
        return None
    url = resolve_database_url(container.get_connection_url())
    return TestServer(f"testcontainers ({POSTGRES_IMAGE})", url, stop=container.stop)


def _from_embedded(tried: list[str]) -> TestServer | None:
    try:
        url = start_embedded_server()
    except Exception as exc:
        tried.append(f"embedded PostgreSQL: {exc}")
        return None
    return TestServer("embedded PostgreSQL (pgserver)", url)


def start_test_server() -> TestServer:
    """The first server that works, in the documented order; refuses with what was tried."""
    tried: list[str] = []
    for candidate in (_from_environment, _from_testcontainers, _from_embedded):
        server = candidate(tried)
        if server is not None:
            server.tried = tried
            return server
    raise AgentWakeError(
        "no PostgreSQL for the tests. Tried, in order:\n  - "
        + "\n  - ".join(tried)
        + f"\nFix one: set {TEST_DATABASE_URL_VARIABLE}=postgresql://user@host/db, start Docker, "
        "or pip install 'agent-wake[embedded]'."
    )


_server_key = pytest.StashKey["TestServer | AgentWakeError"]()


def _server_for(config: pytest.Config) -> TestServer:
    found = config.stash.get(_server_key, None)
    if found is None:
        try:
            found = start_test_server()
        except AgentWakeError as exc:
            found = exc
        config.stash[_server_key] = found
    if isinstance(found, AgentWakeError):
        raise found
    return found


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        ALEMBIC_INI_OPTION,
        "alembic.ini of your own Alembic environment (with agent-wake's agent_wake branch in its "
        "version_locations) to migrate the test database with 'upgrade heads'",
        default="",
    )


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> str | None:
    """One header line naming the test database, only when a collected test needs it."""
    if not any(_DATABASE_FIXTURES.intersection(getattr(item, "fixturenames", ())) for item in items):
        return None
    try:
        return f"agent-wake test database: {_server_for(config).source}"
    except AgentWakeError:
        return "agent-wake test database: none available (the tests that need it report why)"


def pytest_unconfigure(config: pytest.Config) -> None:
    found = config.stash.get(_server_key, None)
    if isinstance(found, TestServer) and found.stop is not None:
        found.stop()


@pytest.fixture(scope="session")
def wake_server(pytestconfig: pytest.Config) -> TestServer:
    """The PostgreSQL server of this test session (see the module docstring for the order)."""
    return _server_for(pytestconfig)


@pytest.fixture(scope="session")
def wake_migrate(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """Migrates a database URL to head, called in a thread with no event loop
    running. Override it to migrate with your own environment."""
    ini = pytestconfig.getini(ALEMBIC_INI_OPTION)
    if not ini:
        return databases.migrate_to_head
    ini_path = Path(pytestconfig.rootpath, ini)

    def migrate_with_own_environment(url: str) -> None:
        # Imported here: pytest loads this plugin in every run, most of which migrate nothing.
        from alembic import command
        from alembic.config import Config

        config = Config(str(ini_path))
        # ConfigParser reads % as interpolation; a socket path in the URL is percent-encoded.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        config.attributes["url"] = url
        command.upgrade(config, "heads")

    return migrate_with_own_environment


@pytest.fixture(scope="session")
def wake_database_url(
    wake_server: TestServer, wake_migrate: Callable[[str], None], pytestconfig: pytest.Config
) -> Iterator[str]:
    """A database created for this test session (per xdist worker), migrated, dropped at the end."""
    worker = getattr(pytestconfig, "workerinput", {}).get("workerid", "main")
    database = databases.ScratchDatabase(wake_server.url, prefix="agent_wake_test", worker=worker, migrate=wake_migrate)
    url = _run_in_fresh_loop(database.create())
    try:
        yield url
    finally:
        _run_in_fresh_loop(database.drop())


def _guarded_engine(url: str) -> AsyncEngine:
    # No pool: each test's connections belong to that test's event loop.
    engine = create_async_engine(url, poolclass=pool.NullPool)
    install_partition_guard(engine, mode="raise")
    return engine


@async_fixture
async def wake_session(wake_database_url: str) -> AsyncIterator[AsyncSession]:
    """An AsyncSession whose work is rolled back after the test, even if it commits."""
    engine = _guarded_engine(wake_database_url)
    try:
        async with engine.connect() as connection:
            transaction = await connection.begin()
            session = AsyncSession(bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint")
            try:
                yield session
            finally:
                await session.close()
                await transaction.rollback()
    finally:
        await engine.dispose()


@async_fixture
async def wake_engine(wake_database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine for tests that open their own connections; the wake tables are emptied afterwards."""
    engine = _guarded_engine(wake_database_url)
    try:
        yield engine
        async with engine.begin() as connection:
            # A transaction the test left open (a wake_session in the same
            # test, a connection never closed) would block TRUNCATE forever.
            await connection.execute(text(f"SET LOCAL lock_timeout = '{_TEARDOWN_LOCK_TIMEOUT_SECONDS}s'"))
            with spans_partitions("test teardown: empty the wake tables"):
                try:
                    await connection.execute(text(f"TRUNCATE {', '.join(sorted(GUARDED_TABLES))}"))
                except DBAPIError as exc:
                    raise AgentWakeError(
                        f"wake_engine could not empty the wake tables within {_TEARDOWN_LOCK_TIMEOUT_SECONDS} s: "
                        "another connection still holds locks on them. Do not use wake_session and "
                        "wake_engine in the same test, and close the connections the test opens."
                    ) from exc
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def wake_secrets() -> SecretBox:
    """A SecretBox with a key generated for this test session."""
    return SecretBox.from_keys(SecretBox.generate_key())


@pytest.fixture
def wake_factory(wake_session: AsyncSession, wake_secrets: SecretBox) -> WakeFactory:
    """Factories of persisted rows in ``wake_session``."""
    return WakeFactory(wake_session, wake_secrets)
