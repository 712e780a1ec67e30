"""Step 6: add agent_wake_schedules.include_conversation_history.

Revision ID: agent_wake_0006
Revises: agent_wake_0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "agent_wake_0006"
down_revision: str | Sequence[str] | None = "agent_wake_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "agent_wake_schedules",
        sa.Column(
            "include_conversation_history",
            sa.Boolean(),
            server_default=sa.text("true"),
            nullable=False,
        ),
    )


def downgrade() -> None:
    op.drop_column("agent_wake_schedules", "include_conversation_history")
