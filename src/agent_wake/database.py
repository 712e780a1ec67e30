"""Where the database is, decided in one place.

:func:`resolve_database_url` picks the URL: the caller's, else
``AGENT_WAKE_DATABASE_URL``, else the embedded PostgreSQL (see
:mod:`agent_wake.embedded_server`), but only where a person asked for it:
``allow_embedded=True``, which a checkout's Alembic ``env.py`` and the
benchmarks pass, or ``AGENT_WAKE_EMBEDDED=1``. A deployed service started
without a URL fails at once instead of keeping its data in a throwaway
server in its working directory.
"""

import os
import re
from typing import Any, Final

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from agent_wake._validation import shown
from agent_wake.embedded_server import start_embedded_server
from agent_wake.errors import InvalidInputError
from agent_wake.partition_guard import GuardMode, install_partition_guard

__all__ = [
    "DATABASE_URL_VARIABLE",
    "EMBEDDED_VARIABLE",
    "create_engine_and_session_factory",
    "resolve_database_url",
    "validate_schema_name",
]

DATABASE_URL_VARIABLE: Final = "AGENT_WAKE_DATABASE_URL"
EMBEDDED_VARIABLE: Final = "AGENT_WAKE_EMBEDDED"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# "postgres://" is what several hosting platforms put in their database URL
# variables; SQLAlchemy knows only "postgresql".
_POSTGRESQL_BACKENDS: Final = frozenset({"postgresql", "postgres"})


def resolve_database_url(url: str | None = None, *, allow_embedded: bool = False) -> str:
    """Return the URL of the database to use, with asyncpg as its driver.

    In this order: ``url``; else the ``AGENT_WAKE_DATABASE_URL`` environment
    variable; else the embedded PostgreSQL, started (or reused) by
    :func:`~agent_wake.embedded_server.start_embedded_server`, but only when
    ``allow_embedded`` is true or ``AGENT_WAKE_EMBEDDED`` is ``1``. An empty
    ``url`` or variable counts as not given. A given URL wins over the
    variable and the embedded server whatever they say.

    Accepts any PostgreSQL URL (``postgresql://``, ``postgres://``,
    ``postgresql+psycopg://``, ...) and returns it with the driver set to
    asyncpg; user, password, host, port, database and query are kept.

    Refuses with ``InvalidInputError``, whose ``field`` names where the bad
    value came from (``url``, ``AGENT_WAKE_DATABASE_URL`` or
    ``AGENT_WAKE_EMBEDDED``):

    - no URL when the embedded server is not allowed (``field`` is
      ``AGENT_WAKE_DATABASE_URL``; the message says how to opt in);
    - a string that is not a URL, or the URL of another database;
    - ``AGENT_WAKE_EMBEDDED`` set to anything but ``1`` or ``0``, when it is
      consulted (no URL given).

    No message repeats more of a URL than its scheme, so a password cannot
    reach a log. Costs no connection; the embedded server, when used, costs
    its start (see there).
    """
    if url:
        return _as_asyncpg_url(url, "url")
    configured = os.environ.get(DATABASE_URL_VARIABLE)
    if configured:
        return _as_asyncpg_url(configured, DATABASE_URL_VARIABLE)
    if allow_embedded or _embedded_allowed_by_environment():
        return start_embedded_server()
    raise InvalidInputError(
        DATABASE_URL_VARIABLE,
        "must be set to the database's URL, such as postgresql://app@db:5432/app (or pass url=...). "
        f"The embedded PostgreSQL starts only when asked for, in development: set {EMBEDDED_VARIABLE}=1 "
        "or pass allow_embedded=True",
    )


def _embedded_allowed_by_environment() -> bool:
    value = os.environ.get(EMBEDDED_VARIABLE, "")
    if value not in ("", "0", "1"):
        raise InvalidInputError(EMBEDDED_VARIABLE, "must be 1 (allow the embedded PostgreSQL) or 0 (do not)")
    return value == "1"


def _as_asyncpg_url(url: str, field: str) -> str:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # Not chained: the parser's message may repeat part of the URL.
        raise InvalidInputError(field, "must be a URL such as postgresql://user@host:5432/dbname") from None
    if parsed.get_backend_name() not in _POSTGRESQL_BACKENDS:
        raise InvalidInputError(
            field, f"must be a PostgreSQL URL (postgresql://...), got the scheme {shown(parsed.drivername)}"
        )
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
    allow_embedded: bool = False,
    **engine_options: Any,
) -> tuple[AsyncEngine, async_sessionmaker[AsyncSession]]:
    """Build an ``AsyncEngine`` and a session factory for the database
    :func:`resolve_database_url` picks from ``url`` and ``allow_embedded``
    (and refuses as it does: a service with no URL configured fails here).

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
    engine = create_async_engine(
        resolve_database_url(url, allow_embedded=allow_embedded), connect_args=connect_args, **engine_options
    )
    install_partition_guard(engine, mode=partition_guard)
    return engine, async_sessionmaker(engine, expire_on_commit=False)
