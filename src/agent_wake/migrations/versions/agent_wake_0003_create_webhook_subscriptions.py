"""Step 3: create webhook_subscriptions and its two indexes; add
wake_fires_webhook_subscription_fk.

The verification check admits only 'generic_hmac_sha256' here (step 5
widens it to any slug).

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
    )


def downgrade() -> None:
    op.drop_constraint("wake_fires_webhook_subscription_fk", "wake_fires", type_="foreignkey")
    op.drop_table("webhook_subscriptions")
