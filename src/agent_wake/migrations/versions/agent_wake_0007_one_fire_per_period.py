"""Step 7: one fire per schedule period, and a small index for crash recovery.

- ``idx_wake_fires_schedule_period``: UNIQUE ``(conversation_id,
  schedule_id, scheduled_fire_at)`` where ``schedule_id`` is set, so a
  second fire of the same period is refused by the database.
- ``idx_wake_fires_dispatching``: ``(actual_fired_at)`` where ``status =
  'dispatching'``, for the recovery job that looks for fires left in flight.

Locks on wake_fires: both are built with CONCURRENTLY, outside any
transaction, under SHARE UPDATE EXCLUSIVE, which readers and writers do
not wait for (VACUUM, ANALYZE, other index builds and DDL on wake_fires
do), for as long as a build takes: two scans of the table. A build also
waits, in turn, for the transactions that were writing to wake_fires and
for every transaction of the database older than its snapshots, so a long
transaction anywhere in the database holds it up. lock_timeout is 5 s for
each of those waits (a session-level SET, RESET afterwards).

A build that fails, at lock_timeout or because duplicates exist, leaves an
INVALID index of its name. Running the upgrade again drops such a leftover
(DROP INDEX CONCURRENTLY, the same lock), keeps an index that is valid,
and builds what is missing. The duplicates are

    SELECT conversation_id, schedule_id, scheduled_fire_at, count(*)
    FROM wake_fires WHERE schedule_id IS NOT NULL
    GROUP BY 1, 2, 3 HAVING count(*) > 1;

Offline SQL cannot look for leftovers: drop an INVALID one by hand. The
downgrade drops both with DROP INDEX CONCURRENTLY, the same lock and
lock_timeout; run it again after a failure.

Revision ID: agent_wake_0007
Revises: agent_wake_0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "agent_wake_0007"
down_revision: str | Sequence[str] | None = "agent_wake_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("SET lock_timeout = '5s'")
        try:
            # A failed build's INVALID index, which IF NOT EXISTS would keep.
            invalid = sa.text(
                "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid AND indexrelid IN "
                "(to_regclass('idx_wake_fires_schedule_period'), to_regclass('idx_wake_fires_dispatching'))"
            )
            leftovers = [] if op.get_context().as_sql else op.get_bind().execute(invalid).scalars().all()
            for index in leftovers:
                op.execute(f"DROP INDEX CONCURRENTLY {index}")
            op.execute(
                "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_wake_fires_schedule_period "
                "ON wake_fires (conversation_id, schedule_id, scheduled_fire_at) "
                "WHERE schedule_id IS NOT NULL"
            )
            op.execute(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_wake_fires_dispatching "
                "ON wake_fires (actual_fired_at) WHERE status = 'dispatching'"
            )
        finally:
            op.execute("RESET lock_timeout")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("SET lock_timeout = '5s'")
        try:
            op.execute("DROP INDEX CONCURRENTLY IF EXISTS idx_wake_fires_dispatching")
            op.execute("DROP INDEX CONCURRENTLY IF EXISTS idx_wake_fires_schedule_period")
        finally:
            op.execute("RESET lock_timeout")
