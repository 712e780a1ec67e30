"""Scratch databases: a uniquely named database created on a PostgreSQL
server, migrated, used by one test run or benchmark, and dropped.

::

    async with ScratchDatabase(server_url, prefix="agent_wake_bench") as url:
        ...  # a database migrated with agent-wake's own Alembic scripts

The name is built here, never taken from the caller whole: ``prefix``, then
``worker`` (the pytest-xdist worker, say), then 10 random hex digits, so
concurrent runs on one server do not meet. The database is dropped with
``WITH (FORCE)``: connections a test left open do not keep it alive.

A process killed before its drop leaves its database behind, so each
database carries a ``COMMENT`` naming its creator (machine, process id,
process start time): :func:`drop_abandoned_databases` drops those whose
creator ran on this machine and is gone, and never one whose creator may
still be running.

``layout="distributed"`` gives a database whose wake tables have the
distributed layout (:func:`agent_wake.distribution.distribute_schema`):
re-keyed on plain PostgreSQL, and distributed too on a Citus coordinator,
where the database is then made on every node of the cluster and dropped
from every node.
"""

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final

from sqlalchemy import pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from agent_wake import distribution
from agent_wake.database import resolve_database_url
from agent_wake.errors import InvalidInputError
from agent_wake.migration_config import alembic_config
from agent_wake.testing import _citus

__all__ = [
    "LAYOUTS",
    "ScratchDatabase",
    "ScratchDatabases",
    "drop_abandoned_databases",
    "execute_autocommit",
    "migrate_to_head",
]

_logger = logging.getLogger(__name__)

_NAME_PART = re.compile(r"[a-z_][a-z0-9_]*")
_RANDOM_HEX_DIGITS = 10
_SCRATCH_NAME = re.compile(rf"[a-z_][a-z0-9_]*_[0-9a-f]{{{_RANDOM_HEX_DIGITS}}}")
_CREATOR_COMMENT = "agent-wake scratch database, created by "
# PostgreSQL truncates longer identifiers silently; the DROP would then miss.
_MAX_NAME_LENGTH = 63

# What a scratch database's wake tables look like: as migrated, or re-keyed (and distributed on Citus).
LAYOUTS: Final = ("reference", "distributed")

# Called with the new database's URL in a thread of its own, with no event
# loop running there: Alembic's env.py may start one with asyncio.run.
_Migrate = Callable[[str], None]


async def execute_autocommit(url: str, *statements: str) -> None:
    """Run ``statements`` in order on a new connection to ``url``, each committed
    on its own (outside a transaction, as CREATE DATABASE requires).

    ``url`` is any PostgreSQL URL (it goes through
    :func:`~agent_wake.database.resolve_database_url`). Costs one connection
    and one round trip per statement; the connection is closed at the end.
    """
    engine = create_async_engine(resolve_database_url(url), isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


def migrate_to_head(url: str) -> None:
    """Upgrade the database at ``url`` to head with agent-wake's packaged Alembic
    scripts (the stand-in ``conversations`` and ``agent_skills`` included).

    Blocks, and runs its own event loop: call it from a thread with none
    running (:class:`ScratchDatabase` does). Alembic is imported on the first
    call, so importing this module does not import it.
    """
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def _this_machine() -> dict[str, str]:
    machine = {"host": socket.gethostname()}
    # Host names repeat (cloned CI machines, "ubuntu", "vm"): the boot id is
    # what tells this machine, as booted now, from another one.
    with contextlib.suppress(OSError):
        machine["boot_id"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    # A container that shares the host's kernel has process ids of its own:
    # its live processes would look gone from here.
    with contextlib.suppress(OSError):
        machine["pid_namespace"] = os.readlink("/proc/self/ns/pid")
    return machine


def _process_start(pid: int) -> str | None:
    # Linux only: the start time (clock ticks after boot) tells a reused
    # process id from the process that wrote it down.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; counted after the command name, which may hold spaces and ")".
    return stat.rsplit(")", 1)[1].split()[19]


def _creator_comment() -> str:
    creator = {"machine": _this_machine(), "pid": os.getpid(), "started": _process_start(os.getpid())}
    return _CREATOR_COMMENT + json.dumps(creator)


def _creator_is_gone(comment: str) -> bool:
    """True only when the creator surely ran on this machine and has exited; whatever is unsure counts as alive."""
    try:
        creator = json.loads(comment.removeprefix(_CREATOR_COMMENT))
    except ValueError:
        return False
    # os.kill on Windows ends the process whatever the signal: no check there.
    machine = _this_machine()
    # Without a boot id (not Linux) "the same machine" cannot be told: keep everything.
    if os.name != "posix" or "boot_id" not in machine or not isinstance(creator, dict):
        return False
    if creator.get("machine") != machine:
        return False
    pid = creator.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    recorded, current = creator.get("started"), _process_start(pid)
    return recorded is not None and current is not None and recorded != current


async def drop_abandoned_databases(server_url: str) -> list[str]:
    """Drop the scratch databases on the server at ``server_url`` whose creator
    ran on this machine and has exited (a killed test run or benchmark);
    returns their names.

    Drops only a database named like a scratch database and carrying the
    creator ``COMMENT`` that :meth:`ScratchDatabase.create` writes, made by a
    process of this machine (host name and, on Linux, PID namespace) that no
    longer runs: its id is free, or (Linux) now belongs to a process started
    later. Never drops one whose creator may be alive (another run, another
    xdist worker), was made elsewhere, or cannot be checked (off POSIX). A
    DROP that fails (another run dropped it first, no privilege) is logged
    and skipped. On a Citus coordinator each is dropped from the workers
    too. Costs one connection and one query (and the Citus check), plus one
    DROP per abandoned database and node.
    """
    server_url = resolve_database_url(server_url)
    engine = create_async_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    dropped: list[str] = []
    try:
        async with engine.connect() as connection:
            found = await connection.execute(
                text(
                    "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
                    "WHERE starts_with(shobj_description(oid, 'pg_database'), :marker)"
                ),
                {"marker": _CREATOR_COMMENT},
            )
            for name, comment in found.all():
                if not _SCRATCH_NAME.fullmatch(name) or not _creator_is_gone(comment):
                    continue
                try:
                    await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                except DBAPIError as exc:
                    _logger.warning("could not drop the abandoned scratch database %s: %s", name, exc.orig)
                    continue
                _logger.info("dropped the abandoned scratch database %s (%s)", name, comment)
                dropped.append(name)
    finally:
        await engine.dispose()
    nodes = await _citus.citus_nodes(server_url) if dropped else None
    if nodes is not None:
        for name in dropped:
            await _citus.drop_on_workers(nodes, server_url, name)
    return dropped


def _database_name(prefix: str, worker: str) -> str:
    for field, value in (("prefix", prefix), ("worker", worker)):
        if not _NAME_PART.fullmatch(value):
            raise InvalidInputError(field, "must be a lower-case identifier: a-z, 0-9 and _, not starting with a digit")
    name = f"{prefix}_{worker}_{uuid.uuid4().hex[:_RANDOM_HEX_DIGITS]}"
    if len(name) > _MAX_NAME_LENGTH:
        raise InvalidInputError("prefix", f"with the worker, makes a database name over {_MAX_NAME_LENGTH} characters")
    return name


def _require_layout(layout: object) -> str:
    if layout not in LAYOUTS:
        raise InvalidInputError("layout", f"must be one of {', '.join(LAYOUTS)}")
    return str(layout)


async def _distribute(url: str) -> None:
    """Give the wake tables at ``url`` (in the schema that holds ``wake_fires``) the distributed layout.
    Nothing when there are none: the caller reports missing tables its own way."""
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            schema = (
                await connection.execute(
                    text(
                        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE c.oid = to_regclass('wake_fires')"
                    )
                )
            ).scalar_one_or_none()
            await connection.commit()
            if schema is not None:
                await connection.run_sync(distribution.distribute_schema, schema)
    finally:
        await engine.dispose()


class ScratchDatabase:
    """One database on the server at ``server_url``, named
    ``{prefix}_{worker}_{10 hex digits}`` (:attr:`name`, at :attr:`url`).

    :meth:`create` creates it and runs ``migrate`` on it (default
    :func:`migrate_to_head`; ``None`` leaves it empty); :meth:`drop` drops it.
    As an async context manager it does both around the block and gives the URL.

    ``layout`` (one of :data:`LAYOUTS`): ``"reference"`` leaves the database
    as ``migrate`` made it; ``"distributed"`` then passes it through
    :func:`~agent_wake.distribution.distribute_schema` (the schema holding
    ``wake_fires``): re-keyed, and, when the server is a Citus coordinator
    (the ``citus`` extension available, and in the server URL's database
    with worker nodes), distributed, the database being made on every node
    with Citus set up in it, as ``cluster db NAME`` does.

    Refuses (``InvalidInputError``) a ``prefix`` or ``worker`` that is not a
    lower-case identifier, a name longer than PostgreSQL's 63 characters, or
    an unknown ``layout``. Nothing connects until :meth:`create`.
    """

    def __init__(
        self,
        server_url: str,
        *,
        prefix: str = "agent_wake_scratch",
        worker: str = "main",
        migrate: _Migrate | None = migrate_to_head,
        layout: str = "reference",
    ) -> None:
        self.server_url = resolve_database_url(server_url)
        self.name = _database_name(prefix, worker)
        self.url = make_url(self.server_url).set(database=self.name).render_as_string(hide_password=False)
        self.migrate = migrate
        self.layout = _require_layout(layout)
        self._citus: _citus.CitusNodes | None = None

    async def create(self) -> str:
        """CREATE DATABASE with a COMMENT naming this process (see
        :func:`drop_abandoned_databases`), then ``migrate`` in a worker thread
        (and the distributed layout, when asked); returns :attr:`url`.

        If the COMMENT, ``migrate`` or the layout's change raises, the
        database is dropped again before the error propagates. Costs two
        server connections, the copy of ``template1``, and whatever
        ``migrate`` costs; the distributed layout adds its change (a few
        round trips on empty tables), and on Citus a connection or two per
        node, a database and the extension made on each.
        """
        if self.layout == "distributed":
            self._citus = await _citus.citus_nodes(self.server_url)
        comment = _creator_comment().replace("'", "''")
        await execute_autocommit(self.server_url, f'CREATE DATABASE "{self.name}"')
        try:
            await execute_autocommit(self.server_url, f"COMMENT ON DATABASE \"{self.name}\" IS '{comment}'")
            if self._citus is not None:
                await _citus.create_on_nodes(self._citus, self.server_url, self.name, self.url)
            if self.migrate is not None:
                await asyncio.to_thread(self.migrate, self.url)
                if self.layout == "distributed":
                    await _distribute(self.url)
        except BaseException:
            await self.drop()
            raise
        return self.url

    async def drop(self) -> None:
        """DROP DATABASE IF EXISTS ... WITH (FORCE): ends the database's open
        connections first; on Citus, on the workers first. Costs one server
        connection (and one per worker); safe to call twice."""
        if self._citus is not None:
            await _citus.drop_on_workers(self._citus, self.server_url, self.name)
        await execute_autocommit(self.server_url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    async def __aenter__(self) -> str:
        return await self.create()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.drop()


class ScratchDatabases:
    """Scratch databases made on demand, for a test that needs one or more,
    all dropped by :meth:`drop_all`. The arguments, and what is refused,
    are :class:`ScratchDatabase`'s.
    """

    def __init__(
        self,
        server_url: str,
        *,
        prefix: str = "agent_wake_scratch",
        worker: str = "main",
        migrate: _Migrate | None = migrate_to_head,
        layout: str = "reference",
    ) -> None:
        _database_name(prefix, worker)  # refuse a bad prefix here, not at the first create
        self.server_url = server_url
        self.prefix = prefix
        self.worker = worker
        self.migrate = migrate
        self.layout = _require_layout(layout)
        self.created: list[ScratchDatabase] = []

    async def create(self) -> str:
        """A new scratch database, created and migrated (see :meth:`ScratchDatabase.create`); its URL."""
        database = ScratchDatabase(
            self.server_url, prefix=self.prefix, worker=self.worker, migrate=self.migrate, layout=self.layout
        )
        self.created.append(database)
        return await database.create()

    async def drop_all(self) -> None:
        """Drop every database :meth:`create` made, one server connection each."""
        for database in self.created:
            await database.drop()
