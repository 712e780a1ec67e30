"""Step 4: replace wake_fires_status_check to admit 'dispatching'.

The downgrade refuses while 'dispatching' rows exist (the old check would
reject them); finalize or delete them first.

Revision ID: agent_wake_0004
Revises: agent_wake_0003
"""

from collections.abc import Sequence

from alembic import op

revision: str = "agent_wake_0004"
down_revision: str | Sequence[str] | None = "agent_wake_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("wake_fires_status_check", "wake_fires", type_="check")
    op.create_check_constraint(
        "wake_fires_status_check",
        "wake_fires",
        "status IN ('dispatching', 'fired', 'fired_silent', 'yielded', 'skipped_busy', "
        "'skipped_rate_limit', 'skipped_cap', 'skipped_no_handler', 'failed')",
    )


def downgrade() -> None:
    op.drop_constraint("wake_fires_status_check", "wake_fires", type_="check")
    op.create_check_constraint(
        "wake_fires_status_check",
        "wake_fires",
        "status IN ('fired', 'fired_silent', 'yielded', 'skipped_busy', "
        "'skipped_rate_limit', 'skipped_cap', 'skipped_no_handler', 'failed')",
    )
