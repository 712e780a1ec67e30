"""Step 7: one fire per schedule period, and a small index for crash recovery.

- ``idx_wake_fires_schedule_period``: UNIQUE ``(conversation_id,
  schedule_id, scheduled_fire_at)`` where ``schedule_id`` is set, so a
  second fire of the same period is refused by the database.
- ``idx_wake_fires_dispatching``: ``(actual_fired_at)`` where ``status =
  'dispatching'``, for the recovery job that looks for fires left in flight.

Both are built with CONCURRENTLY, outside the migration's transaction, so a
populated ``wake_fires`` keeps taking writes while they build. If the unique
build fails because duplicates exist, PostgreSQL leaves an INVALID index:
drop it, remove the duplicates, and upgrade again. The duplicates are

    SELECT conversation_id, schedule_id, scheduled_fire_at, count(*)
    FROM wake_fires WHERE schedule_id IS NOT NULL
    GROUP BY 1, 2, 3 HAVING count(*) > 1;

Revision ID: agent_wake_0007
Revises: agent_wake_0006
"""

from collections.abc import Sequence

from alembic import op

revision: str = "agent_wake_0007"
down_revision: str | Sequence[str] | None = "agent_wake_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY idx_wake_fires_schedule_period "
            "ON wake_fires (conversation_id, schedule_id, scheduled_fire_at) "
            "WHERE schedule_id IS NOT NULL"
        )
        op.execute(
            "CREATE INDEX CONCURRENTLY idx_wake_fires_dispatching "
            "ON wake_fires (actual_fired_at) WHERE status = 'dispatching'"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS idx_wake_fires_dispatching")
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS idx_wake_fires_schedule_period")
