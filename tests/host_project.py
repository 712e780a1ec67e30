"""A host application's Alembic environment, written into a folder for tests.

It owns its own ``conversations`` and ``agent_skills`` (declarative models
of its own, with an extra column) and plugs in only agent-wake's
``agent_wake`` branch, the way the README says: our branch in its
``version_locations``, a root junction revision ``agent_wake_upstream``
that depends on its tables revision, and ``target_metadata`` combining its
metadata with ``agent_wake.Base.metadata``.
"""

import textwrap
from pathlib import Path

ALEMBIC_INI = """\
[alembic]
script_location = %(here)s/migrations
version_locations = %(here)s/migrations/versions agent_wake:migrations/versions
path_separator = space
prepend_sys_path = %(here)s
"""

MODELS = '''
"""The host's own models of the two tables agent-wake needs."""

import uuid
from datetime import datetime

from sqlalchemy import Boolean, DateTime, PrimaryKeyConstraint, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class HostBase(DeclarativeBase):
    pass


class HostConversation(HostBase):
    __tablename__ = "conversations"
    __table_args__ = (PrimaryKeyConstraint("agent_id", "conversation_id", name="conversations_pkey"),)

    agent_id: Mapped[uuid.UUID] = mapped_column(UUID)
    conversation_id: Mapped[uuid.UUID] = mapped_column(UUID)
    user_id: Mapped[uuid.UUID] = mapped_column(UUID)
    title: Mapped[str] = mapped_column(Text, server_default=text("'untitled'"))
    date_created: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))


class HostSkill(HostBase):
    __tablename__ = "agent_skills"
    __table_args__ = (
        PrimaryKeyConstraint("agent_id", "skill_id", name="agent_skills_pkey"),
        UniqueConstraint("skill_id", name="agent_skills_skill_id_key"),
    )

    agent_id: Mapped[uuid.UUID] = mapped_column(UUID)
    skill_id: Mapped[uuid.UUID] = mapped_column(UUID)
    user_id: Mapped[uuid.UUID] = mapped_column(UUID)
    name: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    date_created: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))
    date_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))
'''

# Reads the URL from sqlalchemy.url, as the pytest plugin sets it, or from
# `-x url=...` on the command line. Alembic's async template, plus the
# combined target_metadata.
ENV = """
import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import create_async_engine

import agent_wake
from host_models import HostBase

target_metadata = [HostBase.metadata, agent_wake.Base.metadata]


def run(connection):
    context.configure(connection=connection, target_metadata=target_metadata, compare_server_default=True)
    with context.begin_transaction():
        context.run_migrations()


async def main():
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option("sqlalchemy.url")
    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(run)
    await engine.dispose()


asyncio.run(main())
"""

# Alembic's generic template, for `alembic revision` in the host.
SCRIPT_TEMPLATE = '''"""${message}"""

from alembic import op
import sqlalchemy as sa
${imports if imports else ""}

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade():
    ${upgrades if upgrades else "pass"}


def downgrade():
    ${downgrades if downgrades else "pass"}
'''

TABLES_REVISION = """
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "host_0001"
down_revision = None
branch_labels = ("host",)
depends_on = None


def upgrade():
    op.create_table(
        "conversations",
        sa.Column("agent_id", postgresql.UUID(), nullable=False),
        sa.Column("conversation_id", postgresql.UUID(), nullable=False),
        sa.Column("user_id", postgresql.UUID(), nullable=False),
        sa.Column("title", sa.Text(), server_default=sa.text("'untitled'"), nullable=False),
        sa.Column("date_created", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "conversation_id", name="conversations_pkey"),
    )
    op.create_table(
        "agent_skills",
        sa.Column("agent_id", postgresql.UUID(), nullable=False),
        sa.Column("skill_id", postgresql.UUID(), nullable=False),
        sa.Column("user_id", postgresql.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("date_created", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("date_updated", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "skill_id", name="agent_skills_pkey"),
        sa.UniqueConstraint("skill_id", name="agent_skills_skill_id_key"),
    )


def downgrade():
    op.drop_table("agent_skills")
    op.drop_table("conversations")
"""

# The junction: a root of its own that depends on the host's tables
# revision. Our branch hangs below it and the host's history stays its own,
# so removing our branch never touches a host revision.
UPSTREAM_REVISION = """
revision = "agent_wake_upstream"
down_revision = None
branch_labels = None
depends_on = "host_0001"


def upgrade():
    pass


def downgrade():
    pass
"""


def write_host_project(folder: Path) -> None:
    """The host project in ``folder``: its tables revision ``host_0001`` (branch
    ``host``), the junction, its models in ``host_models.py``."""
    versions = folder / "migrations" / "versions"
    versions.mkdir(parents=True)
    (folder / "alembic.ini").write_text(ALEMBIC_INI)
    (folder / "host_models.py").write_text(MODELS)
    (folder / "migrations" / "env.py").write_text(ENV)
    (folder / "migrations" / "script.py.mako").write_text(SCRIPT_TEMPLATE)
    (versions / "host_0001.py").write_text(TABLES_REVISION)
    (versions / "agent_wake_upstream.py").write_text(UPSTREAM_REVISION)


def write_host_revision(folder: Path, revision: str, down_revision: str, upgrade: str, downgrade: str) -> None:
    """Add a host revision ``revision`` after ``down_revision`` whose upgrade and
    downgrade each run one ``op`` call (given as source, e.g.
    ``op.drop_column("conversations", "archived")``)."""
    source = f"""
        import sqlalchemy as sa
        from alembic import op

        revision = {revision!r}
        down_revision = {down_revision!r}
        branch_labels = None
        depends_on = None


        def upgrade():
            {upgrade}


        def downgrade():
            {downgrade}
        """
    (folder / "migrations" / "versions" / f"{revision}.py").write_text(textwrap.dedent(source))
