"""Step 8: mark the older implementation's cron schedules as read by APScheduler.

The older implementation read cron expressions with APScheduler 3's
``CronTrigger.from_crontab``: day of week 0 is Monday, and a day must match
both day fields. We read standard cron unless ``schedule_config`` says
``"day_of_week_numbering": "apscheduler"``, so each stored row keeps the
meaning it was written with only once it carries that key.

Only in a schema built by the older runner: its ledger ``_schema_migrations``
is the table that name finds from here and lies in ``current_schema()``, and
holds a row with package ``'agent_wake'``. There, the upgrade adds the key to
the ``cron`` rows that lack it and whose day of month (third field) or day of
week (fifth field) is not ``*``, or whose month (fourth field) holds a name
(APScheduler read ``jan/3`` as January alone): on the others both readings
agree. In any other schema it changes nothing.

Stop every pod of the older implementation that still writes cron schedules
before running it: a row written afterwards has no key and is read as
standard cron.

It waits at most 5 s for a lock (``lock_timeout``, for the rest of the
transaction it runs in) and takes only what any
UPDATE takes: ROW EXCLUSIVE on ``agent_wake_schedules``, which blocks no
reads or writes, and row locks on the rows it updates; it reads every row
of the table once. The downgrade removes the key where it is
``'apscheduler'``, in the same schemas only; it cannot tell a row this
revision marked from one written with the key later.

Revision ID: agent_wake_0008
Revises: agent_wake_0007
"""

from collections.abc import Sequence

from alembic import op

revision: str = "agent_wake_0008"
down_revision: str | Sequence[str] | None = "agent_wake_0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# In both directions, PL/pgSQL plans the UPDATE only when it runs, so a schema
# without the ledger never meets its name; to_regclass finds the table the
# UPDATE would read, which must be the ledger of this schema.


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(
        r"""
        DO $migration$
        BEGIN
            IF EXISTS (
                SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.oid = to_regclass('_schema_migrations') AND n.nspname = current_schema()
            ) THEN
                UPDATE agent_wake_schedules
                SET schedule_config = schedule_config || '{"day_of_week_numbering": "apscheduler"}'
                WHERE schedule_type = 'cron'
                    AND NOT schedule_config ? 'day_of_week_numbering'
                    AND EXISTS (
                        SELECT 1
                        FROM regexp_match(
                            schedule_config ->> 'expr', '^\s*\S+\s+\S+\s+(\S+)\s+(\S+)\s+(\S+)\s*$'
                        ) AS fields (day_month_weekday)
                        WHERE day_month_weekday[1] <> '*'
                            OR day_month_weekday[3] <> '*'
                            OR day_month_weekday[2] ~ '[A-Za-z]'
                    )
                    AND EXISTS (SELECT 1 FROM _schema_migrations WHERE package = 'agent_wake');
            END IF;
        END
        $migration$
        """
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(
        """
        DO $migration$
        BEGIN
            IF EXISTS (
                SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.oid = to_regclass('_schema_migrations') AND n.nspname = current_schema()
            ) THEN
                UPDATE agent_wake_schedules
                SET schedule_config = schedule_config - 'day_of_week_numbering'
                WHERE schedule_type = 'cron'
                    AND schedule_config ->> 'day_of_week_numbering' = 'apscheduler'
                    AND EXISTS (SELECT 1 FROM _schema_migrations WHERE package = 'agent_wake');
            END IF;
        END
        $migration$
        """
    )
