"""Step 5: replace webhook_subscriptions_verification_scheme_check with the
slug-format check, so vendor schemes plug in at run time.

The downgrade refuses while subscriptions use another scheme than
'generic_hmac_sha256'.

Revision ID: agent_wake_0005
Revises: agent_wake_0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "agent_wake_0005"
down_revision: str | Sequence[str] | None = "agent_wake_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("webhook_subscriptions_verification_scheme_check", "webhook_subscriptions", type_="check")
    op.create_check_constraint(
        "webhook_subscriptions_verification_scheme_check",
        "webhook_subscriptions",
        "verification_scheme ~ '^[a-z0-9_]+$' AND length(verification_scheme) BETWEEN 1 AND 64",
    )


def downgrade() -> None:
    op.drop_constraint("webhook_subscriptions_verification_scheme_check", "webhook_subscriptions", type_="check")
    op.create_check_constraint(
        "webhook_subscriptions_verification_scheme_check",
        "webhook_subscriptions",
        "verification_scheme IN ('generic_hmac_sha256')",
    )
