"""Stand-in: create conversations (the host application normally owns it).

Revision ID: conversations_0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from agent_wake._older_runner import refuse_a_schema_the_runner_built

revision: str = "conversations_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("conversations",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    refuse_a_schema_the_runner_built(op.get_bind())
    op.create_table(
        "conversations",
        sa.Column("agent_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("conversation_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column(
            "date_created",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("agent_id", "conversation_id", name="conversations_pkey"),
    )


def downgrade() -> None:
    op.drop_table("conversations")
