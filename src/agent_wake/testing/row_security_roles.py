"""Real login roles for tests that run as the application role under row-level security.

:func:`create_row_security_roles` makes an application role and a
maintenance role on the test server, installs the policies and switches
row-level security on in the given database
(:mod:`agent_wake.row_security`); :func:`drop_row_security_roles` removes
them. Roles belong to the whole server, so each carries a comment naming its
database, and :func:`drop_orphaned_test_roles` drops those whose database is
gone (a killed run).
"""

import logging
import secrets
import uuid
from dataclasses import dataclass
from typing import Final

from sqlalchemy import pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from agent_wake.database import resolve_database_url
from agent_wake.row_security import enforce_row_security, generate_declaration_key, install_row_security

__all__ = ["RowSecurityRoles", "create_row_security_roles", "drop_orphaned_test_roles", "drop_row_security_roles"]

_logger = logging.getLogger(__name__)
_ROLE_COMMENT: Final = "agent-wake test role of database "


@dataclass(frozen=True)
class RowSecurityRoles:
    """The two roles of a row-level-security test database, and how to connect as each."""

    key: bytes
    application_role: str
    maintenance_role: str
    application_url: str
    maintenance_url: str


async def create_row_security_roles(database_url: str) -> RowSecurityRoles:
    """Create the roles (LOGIN, random passwords), install the policies and enforce them in that database.

    Revokes ``TEMPORARY`` on the database from ``PUBLIC`` first, as
    :func:`~agent_wake.row_security.install_row_security` requires.

    The URL's user must be able to create roles and own the wake tables
    (the test server's superuser does). Costs one connection and a dozen
    statements.
    """
    url = make_url(resolve_database_url(database_url))
    database = url.database or ""
    suffix = uuid.uuid4().hex[:10]
    application, maintenance = f"agent_wake_app_{suffix}", f"agent_wake_maintenance_{suffix}"
    passwords = {role: secrets.token_hex(16) for role in (application, maintenance)}
    key = generate_declaration_key()
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            for role, password in passwords.items():
                await connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
                await connection.execute(
                    text(f"COMMENT ON ROLE {role} IS {_literal(_ROLE_COMMENT + database)}"),
                )
            # PUBLIC may create temporary objects in a new database; an application role must not.
            await connection.exec_driver_sql(f'REVOKE TEMPORARY ON DATABASE "{database}" FROM PUBLIC')
            await connection.run_sync(
                install_row_security, key=key, application_role=application, maintenance_role=maintenance
            )
            await connection.run_sync(enforce_row_security)
    finally:
        await engine.dispose()
    return RowSecurityRoles(
        key=key,
        application_role=application,
        maintenance_role=maintenance,
        application_url=url.set(username=application, password=passwords[application]).render_as_string(False),
        maintenance_url=url.set(username=maintenance, password=passwords[maintenance]).render_as_string(False),
    )


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def drop_row_security_roles(database_url: str, roles: RowSecurityRoles) -> None:
    """Switch row-level security off in that database and drop both roles (and their grants there)."""
    engine = create_async_engine(resolve_database_url(database_url), poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(enforce_row_security, enabled=False)
            await connection.exec_driver_sql(f"DROP OWNED BY {roles.application_role}, {roles.maintenance_role}")
            await connection.exec_driver_sql(f"DROP ROLE {roles.application_role}, {roles.maintenance_role}")
    finally:
        await engine.dispose()


async def drop_orphaned_test_roles(server_url: str) -> list[str]:
    """Drop the test roles whose database no longer exists; returns their names.

    A role that still has privileges somewhere is left, logged.
    """
    engine = create_async_engine(
        resolve_database_url(server_url), isolation_level="AUTOCOMMIT", poolclass=pool.NullPool
    )
    dropped: list[str] = []
    try:
        async with engine.connect() as connection:
            found = await connection.execute(
                text(
                    "SELECT rolname FROM pg_roles WHERE starts_with(shobj_description(oid, 'pg_authid'), :marker)"
                    " AND substr(shobj_description(oid, 'pg_authid'), length(:marker) + 1)"
                    " NOT IN (SELECT datname FROM pg_database)"
                ),
                {"marker": _ROLE_COMMENT},
            )
            for (role,) in found.all():
                try:
                    await connection.exec_driver_sql(f'DROP ROLE "{role}"')
                except DBAPIError as exc:
                    _logger.warning("could not drop the orphaned test role %s: %s", role, exc.orig)
                    continue
                dropped.append(role)
    finally:
        await engine.dispose()
    return dropped
