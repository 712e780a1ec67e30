"""Stand-in: create agent_skills (the host application normally owns it).

Revision ID: agent_skills_0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from agent_wake._older_runner import refuse_a_schema_the_runner_built

revision: str = "agent_skills_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("agent_skills",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    refuse_a_schema_the_runner_built(op.get_bind())
    op.create_table(
        "agent_skills",
        sa.Column("agent_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("skill_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "date_created",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "date_updated",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("agent_id", "skill_id", name="agent_skills_pkey"),
        sa.UniqueConstraint("skill_id", name="agent_skills_skill_id_key"),
    )


def downgrade() -> None:
    op.drop_table("agent_skills")
