"""Step 2: create wake_fires and its three indexes.

The status check does not admit 'dispatching' yet (step 4 adds it) and
webhook_subscription_id has no foreign key yet (step 3 adds it).

Locks on a table that already exists: SHARE ROW EXCLUSIVE on
agent_wake_schedules, for wake_fires_schedule_fk. Writers of
agent_wake_schedules wait (its readers do not) until the transaction
commits (the README's "Running the revisions on a live database" says
when): milliseconds, as the new table is empty and no row is read. Getting
the lock waits for open transactions that wrote to agent_wake_schedules,
and every later writer queues behind that wait, so lock_timeout is 5 s:
past it the transaction rolls back ("canceling statement due to lock
timeout"), nothing has changed, and the upgrade can be run again as it is.
The downgrade takes ACCESS EXCLUSIVE on wake_fires and agent_wake_schedules
(dropping the table drops the foreign key), with the same lock_timeout.

Revision ID: agent_wake_0002
Revises: agent_wake_0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "agent_wake_0002"
down_revision: str | Sequence[str] | None = "agent_wake_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.create_table(
        "wake_fires",
        sa.Column("conversation_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("fire_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("schedule_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("webhook_subscription_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("scheduled_fire_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "actual_fired_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("display_suppressed", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("output_text", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "date_created",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("conversation_id", "fire_id", name="wake_fires_pkey"),
        sa.UniqueConstraint("fire_id", name="wake_fires_fire_id_key"),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["agent_wake_schedules.schedule_id"],
            name="wake_fires_schedule_fk",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "NOT (schedule_id IS NOT NULL AND webhook_subscription_id IS NOT NULL)",
            name="wake_fires_one_source_check",
        ),
        sa.CheckConstraint(
            "status IN ('fired', 'fired_silent', 'yielded', 'skipped_busy', "
            "'skipped_rate_limit', 'skipped_cap', 'skipped_no_handler', 'failed')",
            name="wake_fires_status_check",
        ),
    )
    op.create_index(
        "idx_wake_fires_schedule_time",
        "wake_fires",
        ["schedule_id", sa.literal_column("actual_fired_at DESC")],
        postgresql_where=sa.text("schedule_id IS NOT NULL"),
    )
    op.create_index(
        "idx_wake_fires_webhook_time",
        "wake_fires",
        ["webhook_subscription_id", sa.literal_column("actual_fired_at DESC")],
        postgresql_where=sa.text("webhook_subscription_id IS NOT NULL"),
    )
    op.create_index(
        "idx_wake_fires_conv_time",
        "wake_fires",
        ["conversation_id", sa.literal_column("actual_fired_at DESC")],
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_table("wake_fires")
