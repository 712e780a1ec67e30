"""Step 4: replace wake_fires_status_check to admit 'dispatching'.

Locks on wake_fires, in two transactions:

1. DROP the old check and ADD the new one NOT VALID: ACCESS EXCLUSIVE
   (every reader and writer waits) until this transaction commits, at the
   end of step 1: milliseconds, as no row is read. Getting the lock waits
   for every open transaction that has touched wake_fires, and everything
   that touches it later queues behind that wait, so lock_timeout is 5 s:
   past it the transaction rolls back ("canceling statement due to lock
   timeout") and nothing has changed.
2. VALIDATE CONSTRAINT, in a transaction of its own: reads every row under
   SHARE UPDATE EXCLUSIVE, which readers and writers do not wait for
   (VACUUM, ANALYZE, index builds and other DDL on wake_fires do). Past
   the same 5 s lock_timeout it fails with step 1 committed and this
   revision not recorded (the new check, enforced on new rows, shows NOT
   VALID); running the upgrade again repeats both steps.

Either way, run the upgrade again once the blocking transaction has ended.

The downgrade refuses while 'dispatching' rows exist (the old check would
reject them); finalize or delete them first. It replaces the check in one
transaction, so that a refusal changes nothing: ACCESS EXCLUSIVE on
wake_fires while it reads every row, with the same lock_timeout.

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
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_constraint("wake_fires_status_check", "wake_fires", type_="check")
    op.create_check_constraint(
        "wake_fires_status_check",
        "wake_fires",
        "status IN ('dispatching', 'fired', 'fired_silent', 'yielded', 'skipped_busy', "
        "'skipped_rate_limit', 'skipped_cap', 'skipped_no_handler', 'failed')",
        postgresql_not_valid=True,
    )
    with op.get_context().autocommit_block():
        op.execute("SET lock_timeout = '5s'")
        try:
            op.execute("ALTER TABLE wake_fires VALIDATE CONSTRAINT wake_fires_status_check")
        finally:
            op.execute("RESET lock_timeout")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_constraint("wake_fires_status_check", "wake_fires", type_="check")
    op.create_check_constraint(
        "wake_fires_status_check",
        "wake_fires",
        "status IN ('fired', 'fired_silent', 'yielded', 'skipped_busy', "
        "'skipped_rate_limit', 'skipped_cap', 'skipped_no_handler', 'failed')",
    )
