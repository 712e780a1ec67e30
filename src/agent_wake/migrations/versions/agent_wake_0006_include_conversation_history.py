"""Step 6: add agent_wake_schedules.include_conversation_history.

Locks on agent_wake_schedules: ACCESS EXCLUSIVE (every reader and writer
waits) until the transaction commits (the README's "Running the revisions
on a live database" says when). A column with a constant default changes
only the catalog (PostgreSQL 11 and later): milliseconds, no row is read
or rewritten. Getting the lock waits for every open transaction that has
touched agent_wake_schedules, and everything that touches it later queues
behind that wait, so lock_timeout is 5 s: past it the transaction rolls
back ("canceling statement due to lock timeout"), nothing has changed, and
the upgrade can be run again as it is. The downgrade drops the column
under the same lock, also without a rewrite, with the same lock_timeout.

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
    op.execute("SET LOCAL lock_timeout = '5s'")
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
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_column("agent_wake_schedules", "include_conversation_history")
