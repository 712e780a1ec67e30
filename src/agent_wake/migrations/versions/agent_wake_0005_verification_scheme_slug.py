"""Step 5: replace webhook_subscriptions_verification_scheme_check with the
slug-format check, so vendor schemes plug in at run time.

Locks on webhook_subscriptions, in two transactions:

1. DROP the old check and ADD the new one NOT VALID: ACCESS EXCLUSIVE
   (every reader and writer waits) until this transaction commits, at the
   end of step 1: milliseconds, as no row is read. Getting the lock waits
   for every open transaction that has touched webhook_subscriptions, and
   everything that touches it later queues behind that wait, so
   lock_timeout is 5 s: past it the transaction rolls back ("canceling
   statement due to lock timeout") and nothing has changed.
2. VALIDATE CONSTRAINT, in a transaction of its own: reads every row under
   SHARE UPDATE EXCLUSIVE, which readers and writers do not wait for
   (VACUUM, ANALYZE, index builds and other DDL on webhook_subscriptions
   do). Past the same 5 s lock_timeout it fails with step 1 committed and
   this revision not recorded (the new check, enforced on new rows, shows
   NOT VALID); running the upgrade again repeats both steps.

Either way, run the upgrade again once the blocking transaction has ended.

The downgrade refuses while subscriptions use another scheme than
'generic_hmac_sha256'. It replaces the check in one transaction, so that a
refusal changes nothing: ACCESS EXCLUSIVE on webhook_subscriptions while
it reads every row, with the same lock_timeout.

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
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_constraint("webhook_subscriptions_verification_scheme_check", "webhook_subscriptions", type_="check")
    op.create_check_constraint(
        "webhook_subscriptions_verification_scheme_check",
        "webhook_subscriptions",
        "verification_scheme ~ '^[a-z0-9_]+$' AND length(verification_scheme) BETWEEN 1 AND 64",
        postgresql_not_valid=True,
    )
    with op.get_context().autocommit_block():
        op.execute("SET lock_timeout = '5s'")
        try:
            op.execute(
                "ALTER TABLE webhook_subscriptions VALIDATE CONSTRAINT webhook_subscriptions_verification_scheme_check"
            )
        finally:
            op.execute("RESET lock_timeout")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_constraint("webhook_subscriptions_verification_scheme_check", "webhook_subscriptions", type_="check")
    op.create_check_constraint(
        "webhook_subscriptions_verification_scheme_check",
        "webhook_subscriptions",
        "verification_scheme IN ('generic_hmac_sha256')",
    )
