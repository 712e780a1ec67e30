"""Scratch databases on a Citus cluster: a database exists on every node, with
the extension created in it on each, and the coordinator's copy knows its
own host and its workers (Citus keeps the node list per database).

A server is a Citus coordinator when the ``citus`` extension is available
there and its maintenance database (the server URL's) has the extension and
active worker nodes: a server with the extension only installed, or a worker,
is plain PostgreSQL here.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

__all__ = ["CitusNodes", "citus_nodes", "create_on_nodes", "drop_on_workers"]


@dataclass(frozen=True)
class CitusNodes:
    """Where the coordinator and the workers of a Citus cluster listen, as its ``pg_dist_node`` says."""

    coordinator: tuple[str, int]
    workers: tuple[tuple[str, int], ...]

    def worker_urls(self, server_url: str) -> list[str]:
        """``server_url`` (user, password, database) pointed at each worker."""
        url = make_url(server_url)
        return [url.set(host=host, port=port).render_as_string(hide_password=False) for host, port in self.workers]


async def citus_nodes(server_url: str) -> CitusNodes | None:
    """The cluster the server at ``server_url`` coordinates, or ``None`` when it coordinates none.

    Costs one connection and up to three queries.
    """
    engine = create_async_engine(server_url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            available = await connection.execute(text("SELECT 1 FROM pg_available_extensions WHERE name = 'citus'"))
            if available.first() is None:
                return None
            installed = await connection.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'citus'"))
            if installed.first() is None:
                return None
            nodes = (
                await connection.execute(
                    text(
                        "SELECT nodename, nodeport, groupid FROM pg_dist_node "
                        "WHERE isactive AND noderole = 'primary' ORDER BY groupid, nodeport"
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    workers = tuple((name, port) for name, port, group in nodes if group != 0)
    if not workers:
        return None
    url = make_url(server_url)
    coordinator = next(((name, port) for name, port, group in nodes if group == 0), (url.host or "", url.port or 5432))
    return CitusNodes(coordinator, workers)


async def create_on_nodes(nodes: CitusNodes, server_url: str, name: str, url: str) -> None:
    """Create the database ``name`` on every worker (the coordinator's copy, at ``url``, exists
    already), the extension in it on every node, and register the coordinator and the workers in
    the coordinator's copy. Costs a few connections per node, and the extension's creation on each."""
    worker_urls = nodes.worker_urls(server_url)
    for worker_url in worker_urls:
        await _execute(worker_url, f'CREATE DATABASE "{name}"')
    for node_url in [*(_in_database(worker_url, name) for worker_url in worker_urls), url]:
        await _execute(node_url, "CREATE EXTENSION citus")
    host, port = nodes.coordinator
    await _execute(url, "SELECT citus_set_coordinator_host(:host, :port)", {"host": host, "port": port})
    for host, port in nodes.workers:
        await _execute(url, "SELECT citus_add_node(:host, :port)", {"host": host, "port": port})


async def drop_on_workers(nodes: CitusNodes, server_url: str, name: str) -> None:
    """DROP DATABASE IF EXISTS ... WITH (FORCE) on every worker. One connection per worker."""
    for worker_url in nodes.worker_urls(server_url):
        await _execute(worker_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _in_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


async def _execute(url: str, statement: str, parameters: Mapping[str, Any] | None = None) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement), parameters)
    finally:
        await engine.dispose()
