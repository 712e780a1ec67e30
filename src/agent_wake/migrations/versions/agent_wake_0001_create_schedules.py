"""Step 1: create agent_wake_schedules and its four indexes.

On a schema where the older runner made the wake tables (its
_schema_migrations records an agent_wake step), it stops first, with one
line saying to adopt the schema instead.

Locks on a table that already exists: SHARE ROW EXCLUSIVE on agent_skills
(yours, in a host history), for agent_wake_schedules_skill_fk. Writers of
agent_skills wait (its readers do not) until the transaction commits (the
README's "Running the revisions on a live database" says when):
milliseconds, as the new table is empty and no row is read. Getting the
lock waits for open transactions that wrote to agent_skills, and every
later writer queues behind that wait, so lock_timeout is 5 s: past it the
transaction rolls back ("canceling statement due to lock timeout"),
nothing has changed, and the upgrade can be run again as it is. The
downgrade takes ACCESS EXCLUSIVE on agent_wake_schedules and agent_skills
(dropping the table drops the foreign key), with the same lock_timeout.

Revision ID: agent_wake_0001
Revises: agent_wake_upstream
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from agent_wake._older_runner import refuse_a_schema_the_runner_built

revision: str = "agent_wake_0001"
down_revision: str | Sequence[str] | None = "agent_wake_upstream"
branch_labels: str | Sequence[str] | None = ("agent_wake",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    refuse_a_schema_the_runner_built(op.get_bind(), only_with_wake_tables=True)
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.create_table(
        "agent_wake_schedules",
        sa.Column("conversation_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("schedule_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("agent_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("skill_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("schedule_type", sa.Text(), nullable=False),
        sa.Column(
            "schedule_config",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("task_prompt", sa.Text(), nullable=True),
        sa.Column("execution_mode", sa.Text(), server_default=sa.text("'inline'"), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'active'"), nullable=False),
        sa.Column("next_fire_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_fired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("missed_fire_policy", sa.Text(), server_default=sa.text("'coalesce'"), nullable=False),
        sa.Column("context_from_schedule_id", postgresql.UUID(as_uuid=True), nullable=True),
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
        sa.PrimaryKeyConstraint("conversation_id", "schedule_id", name="agent_wake_schedules_pkey"),
        sa.UniqueConstraint("schedule_id", name="agent_wake_schedules_schedule_id_key"),
        sa.ForeignKeyConstraint(
            ["skill_id"],
            ["agent_skills.skill_id"],
            name="agent_wake_schedules_skill_fk",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["context_from_schedule_id"],
            ["agent_wake_schedules.schedule_id"],
            name="agent_wake_schedules_context_from_fk",
            ondelete="SET NULL",
        ),
        sa.CheckConstraint(
            "execution_mode IN ('inline', 'spawn')",
            name="agent_wake_schedules_execution_mode_check",
        ),
        sa.CheckConstraint(
            "status IN ('active', 'paused', 'expired')",
            name="agent_wake_schedules_status_check",
        ),
        sa.CheckConstraint(
            "missed_fire_policy IN ('coalesce', 'catch_up')",
            name="agent_wake_schedules_missed_fire_policy_check",
        ),
    )
    op.create_index(
        "idx_wake_schedules_next_fire",
        "agent_wake_schedules",
        ["next_fire_at"],
        postgresql_where=sa.text("status = 'active' AND next_fire_at IS NOT NULL"),
    )
    op.create_index("idx_wake_schedules_conv_status", "agent_wake_schedules", ["conversation_id", "status"])
    op.create_index("idx_wake_schedules_user", "agent_wake_schedules", ["user_id"])
    op.create_index(
        "idx_wake_schedules_context_from",
        "agent_wake_schedules",
        ["context_from_schedule_id"],
        postgresql_where=sa.text("context_from_schedule_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_table("agent_wake_schedules")
