"""Step 3: create webhook_subscriptions and its two indexes; add
wake_fires_webhook_subscription_fk.

The verification check admits only 'generic_hmac_sha256' here (step 5
widens it to any slug).

Locks on tables that already exist, in two transactions:

1. Creating the table with its key to agent_skills, then adding
   wake_fires_webhook_subscription_fk NOT VALID: SHARE ROW EXCLUSIVE on
   agent_skills, then on wake_fires. Their writers wait (readers do not)
   from each lock until the commit that ends step 1: milliseconds once
   both are held, as no row is read. Getting a lock waits for open
   transactions that wrote to the table, and every later writer queues
   behind that wait (agent_skills' writers also while it waits for
   wake_fires), so lock_timeout is 5 s: past it the transaction rolls
   back ("canceling statement due to lock timeout") and nothing has
   changed.
2. VALIDATE CONSTRAINT, in a transaction of its own: reads every row of
   wake_fires under SHARE UPDATE EXCLUSIVE, which readers and writers do
   not wait for (VACUUM, ANALYZE, index builds and other DDL on wake_fires
   do). It fails past the same 5 s lock_timeout, or on a fire whose
   webhook_subscription_id names no subscription, with step 1 committed
   and this revision not recorded (the key, enforced on new rows, shows
   NOT VALID). Running the upgrade again resumes here: it finds the key
   and runs only step 2.

Either way, run the upgrade again once the blocking transaction has ended
(or the stray fires are fixed). The downgrade, in one transaction with the
same lock_timeout, takes ACCESS EXCLUSIVE on wake_fires and
webhook_subscriptions (dropping the key) and on agent_skills (dropping the
table drops its key), for milliseconds.

Revision ID: agent_wake_0003
Revises: agent_wake_0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "agent_wake_0003"
down_revision: str | Sequence[str] | None = "agent_wake_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A run that failed in step 2 (or before recording this revision) has
    # committed step 1: resume at step 2. Offline SQL cannot look.
    key = sa.text(
        "SELECT 1 FROM pg_constraint "
        "WHERE conrelid = to_regclass('wake_fires') AND conname = 'wake_fires_webhook_subscription_fk'"
    )
    step_1_committed = not op.get_context().as_sql and op.get_bind().execute(key).first() is not None
    if not step_1_committed:
        op.execute("SET LOCAL lock_timeout = '5s'")
        op.create_table(
            "webhook_subscriptions",
            sa.Column("conversation_id", postgresql.UUID(as_uuid=True), nullable=False),
            sa.Column("subscription_id", postgresql.UUID(as_uuid=True), nullable=False),
            sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
            sa.Column("agent_id", postgresql.UUID(as_uuid=True), nullable=False),
            sa.Column("default_skill_id", postgresql.UUID(as_uuid=True), nullable=True),
            sa.Column("name", sa.Text(), nullable=True),
            sa.Column("secret_ciphertext", postgresql.BYTEA(), nullable=False),
            sa.Column("allowed_source_pattern", sa.Text(), nullable=True),
            sa.Column("execution_mode", sa.Text(), server_default=sa.text("'inline'"), nullable=False),
            sa.Column("task_prompt_template", sa.Text(), nullable=True),
            sa.Column(
                "verification_scheme",
                sa.Text(),
                server_default=sa.text("'generic_hmac_sha256'"),
                nullable=False,
            ),
            sa.Column("status", sa.Text(), server_default=sa.text("'active'"), nullable=False),
            sa.Column("rate_limit_per_minute", sa.Integer(), nullable=True),
            sa.Column("last_fired_at", sa.DateTime(timezone=True), nullable=True),
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
            sa.PrimaryKeyConstraint("conversation_id", "subscription_id", name="webhook_subscriptions_pkey"),
            sa.UniqueConstraint("subscription_id", name="webhook_subscriptions_subscription_id_key"),
            sa.ForeignKeyConstraint(
                ["default_skill_id"],
                ["agent_skills.skill_id"],
                name="webhook_subscriptions_default_skill_fk",
                ondelete="SET NULL",
            ),
            sa.CheckConstraint(
                "execution_mode IN ('inline', 'spawn')",
                name="webhook_subscriptions_execution_mode_check",
            ),
            sa.CheckConstraint(
                "verification_scheme IN ('generic_hmac_sha256')",
                name="webhook_subscriptions_verification_scheme_check",
            ),
            sa.CheckConstraint("status IN ('active', 'paused')", name="webhook_subscriptions_status_check"),
        )
        op.create_index("idx_webhook_subs_conv", "webhook_subscriptions", ["conversation_id", "status"])
        op.create_index("idx_webhook_subs_user", "webhook_subscriptions", ["user_id"])
        op.create_foreign_key(
            "wake_fires_webhook_subscription_fk",
            "wake_fires",
            "webhook_subscriptions",
            ["webhook_subscription_id"],
            ["subscription_id"],
            ondelete="SET NULL",
            postgresql_not_valid=True,
        )
    with op.get_context().autocommit_block():
        op.execute("SET lock_timeout = '5s'")
        try:
            op.execute("ALTER TABLE wake_fires VALIDATE CONSTRAINT wake_fires_webhook_subscription_fk")
        finally:
            op.execute("RESET lock_timeout")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_constraint("wake_fires_webhook_subscription_fk", "wake_fires", type_="foreignkey")
    op.drop_table("webhook_subscriptions")
