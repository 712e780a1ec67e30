"""Where the database is, decided in one place.

The URL comes from the caller, else from ``AGENT_WAKE_DATABASE_URL``, else an
embedded PostgreSQL is started (the ``pgserver`` package ships the server
binaries in its wheel) with its data in ``AGENT_WAKE_EMBEDDED_DIR``
(default ``./.agent-wake/pgdata``). The embedded server runs as long as the
process that started it and is stopped when the last such process exits;
its data stays in the folder for the next start.
"""

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from agent_wake.errors import AgentWakeError, InvalidInputError
from agent_wake.partition_guard import GuardMode, install_partition_guard

__all__ = [
    "DATABASE_URL_VARIABLE",
    "EMBEDDED_DIR_VARIABLE",
    "create_engine_and_session_factory",
    "resolve_database_url",
    "start_embedded_server",
    "validate_schema_name",
]

DATABASE_URL_VARIABLE = "AGENT_WAKE_DATABASE_URL"
EMBEDDED_DIR_VARIABLE = "AGENT_WAKE_EMBEDDED_DIR"
_DEFAULT_EMBEDDED_DIR = Path(".agent-wake") / "pgdata"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_logger = logging.getLogger(__name__)

# pgserver stops the server when the handle's process exits; keeping the
# handle here keeps one server per process however often a URL is resolved.
_embedded_servers: dict[Path, Any] = {}


def start_embedded_server(data_dir: Path | None = None) -> str:
    """Start (or reuse) the embedded PostgreSQL and return its asyncpg URL.

    The server listens only on a Unix socket. Costs a second or two on the
    first call of a process (``initdb`` on the first call ever); later calls
    return at once.
    """
    folder = data_dir or Path(os.environ.get(EMBEDDED_DIR_VARIABLE, _DEFAULT_EMBEDDED_DIR))
    folder = folder.resolve()
    server = _embedded_servers.get(folder)
    if server is None:
        try:
            with warnings.catch_warnings():
                # pgserver resolves a runtime folder at import and warns when
                # XDG_RUNTIME_DIR is unset, which is normal outside a desktop.
                warnings.simplefilter("ignore")
                from pgserver.postgres_server import get_server
        except ImportError as exc:
            raise AgentWakeError(
                f"no database URL given ({DATABASE_URL_VARIABLE} is unset) and the embedded "
                "PostgreSQL is not installed: pip install 'agent-wake[embedded]', or set "
                f"{DATABASE_URL_VARIABLE}"
            ) from exc
        folder.mkdir(parents=True, exist_ok=True)
        _logger.info("starting the embedded PostgreSQL with its data in %s", folder)
        server = get_server(folder, cleanup_mode="stop")
        _embedded_servers[folder] = server
    return _as_asyncpg_url(str(server.get_uri()))


def resolve_database_url(url: str | None = None) -> str:
    """Return the asyncpg URL to use: ``url``, else the environment, else the embedded server."""
    chosen = url or os.environ.get(DATABASE_URL_VARIABLE)
    if chosen:
        return _as_asyncpg_url(chosen)
    return start_embedded_server()


def _as_asyncpg_url(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise InvalidInputError("url", f"must be a PostgreSQL URL, got backend {parsed.drivername!r}")
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def validate_schema_name(schema: str) -> str:
    """Return ``schema`` if it is a plain lower-case PostgreSQL identifier, else refuse it."""
    if not _SCHEMA_NAME.match(schema):
        raise InvalidInputError(
            "schema",
            "must be a lower-case identifier: a-z, 0-9 and _, not starting with a digit, at most 63 characters",
        )
    return schema


def create_engine_and_session_factory(
    url: str | None = None,
    *,
    schema: str | None = None,
    partition_guard: GuardMode = "raise",
    **engine_options: Any,
) -> tuple[AsyncEngine, async_sessionmaker[AsyncSession]]:
    """Build an ``AsyncEngine`` and a session factory for the resolved database.

    ``schema`` makes that PostgreSQL schema every connection's whole
    ``search_path`` (one copy of the tables per agent schema; nothing
    resolves to ``public`` by accident). Sessions do
    not expire objects on commit, so models stay readable after the caller
    commits. The partition guard is installed in ``partition_guard`` mode
    (see :func:`~agent_wake.partition_guard.install_partition_guard`).
    Extra keyword arguments go to ``create_async_engine``.
    """
    connect_args: dict[str, Any] = dict(engine_options.pop("connect_args", {}))
    if schema is not None:
        server_settings = dict(connect_args.get("server_settings", {}))
        server_settings["search_path"] = validate_schema_name(schema)
        connect_args["server_settings"] = server_settings
    engine = create_async_engine(resolve_database_url(url), connect_args=connect_args, **engine_options)
    install_partition_guard(engine, mode=partition_guard)
    return engine, async_sessionmaker(engine, expire_on_commit=False)
