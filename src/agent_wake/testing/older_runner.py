"""A schema built the way the older migration runner built it, for tests of
adoption: its own DDL, step by step, recorded in its ledger.

::

    await build_with_older_runner(url, schema="agent_0123...", through_step=4)

The DDL is the runner's (``shared/schema.md``), written out here and not
taken from agent-wake's revisions, so that adopting what it builds proves
something. Like the runner, it takes the runner's advisory lock on the
schema, sets ``search_path`` to the schema then ``public``, and runs each
statement in its own transaction. ``conversations`` and ``agent_skills``
are created as the platform's other packages would, with ledger rows of
their own (``conversations`` 1 to 9, ``agent_skills`` 1 and 2).
"""

from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from agent_wake import _older_runner
from agent_wake.database import resolve_database_url, validate_schema_name

__all__ = ["OLDER_RUNNER_STEP_DDL", "build_with_older_runner"]

_LEDGER = """
CREATE TABLE IF NOT EXISTS _schema_migrations (
    version INTEGER NOT NULL,
    package VARCHAR(255) NOT NULL,
    description TEXT,
    date_applied TIMESTAMP NOT NULL DEFAULT now(),
    PRIMARY KEY (version, package)
)
"""

_UPSTREAM = (
    """
    CREATE TABLE conversations (
        agent_id UUID NOT NULL,
        conversation_id UUID NOT NULL,
        user_id UUID NOT NULL,
        date_created TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (agent_id, conversation_id)
    )
    """,
    """
    CREATE TABLE agent_skills (
        agent_id UUID NOT NULL,
        skill_id UUID NOT NULL,
        user_id UUID NOT NULL,
        name TEXT NOT NULL,
        enabled BOOLEAN NOT NULL DEFAULT true,
        date_created TIMESTAMPTZ NOT NULL DEFAULT now(),
        date_updated TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (agent_id, skill_id),
        UNIQUE (skill_id)
    )
    """,
)
_UPSTREAM_LEDGER = [("conversations", version) for version in range(1, 10)] + [
    ("agent_skills", version) for version in (1, 2)
]

# The statements of each of the six agent_wake steps, in order.
OLDER_RUNNER_STEP_DDL: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE agent_wake_schedules (
            conversation_id UUID NOT NULL,
            schedule_id UUID NOT NULL,
            user_id UUID NOT NULL,
            agent_id UUID NOT NULL,
            skill_id UUID,
            schedule_type TEXT NOT NULL,
            schedule_config JSONB NOT NULL DEFAULT '{}'::jsonb,
            task_prompt TEXT,
            execution_mode TEXT NOT NULL DEFAULT 'inline',
            status TEXT NOT NULL DEFAULT 'active',
            next_fire_at TIMESTAMPTZ,
            last_fired_at TIMESTAMPTZ,
            name TEXT,
            missed_fire_policy TEXT NOT NULL DEFAULT 'coalesce',
            context_from_schedule_id UUID,
            date_created TIMESTAMPTZ NOT NULL DEFAULT now(),
            date_updated TIMESTAMPTZ NOT NULL DEFAULT now(),
            CONSTRAINT agent_wake_schedules_pkey PRIMARY KEY (conversation_id, schedule_id),
            CONSTRAINT agent_wake_schedules_schedule_id_key UNIQUE (schedule_id),
            CONSTRAINT agent_wake_schedules_skill_fk FOREIGN KEY (skill_id)
                REFERENCES agent_skills (skill_id) ON DELETE SET NULL,
            CONSTRAINT agent_wake_schedules_context_from_fk FOREIGN KEY (context_from_schedule_id)
                REFERENCES agent_wake_schedules (schedule_id) ON DELETE SET NULL,
            CONSTRAINT agent_wake_schedules_execution_mode_check CHECK (execution_mode IN ('inline', 'spawn')),
            CONSTRAINT agent_wake_schedules_status_check CHECK (status IN ('active', 'paused', 'expired')),
            CONSTRAINT agent_wake_schedules_missed_fire_policy_check
                CHECK (missed_fire_policy IN ('coalesce', 'catch_up'))
        )
        """,
        "CREATE INDEX idx_wake_schedules_next_fire ON agent_wake_schedules (next_fire_at) "
        "WHERE status = 'active' AND next_fire_at IS NOT NULL",
        "CREATE INDEX idx_wake_schedules_conv_status ON agent_wake_schedules (conversation_id, status)",
        "CREATE INDEX idx_wake_schedules_user ON agent_wake_schedules (user_id)",
        "CREATE INDEX idx_wake_schedules_context_from ON agent_wake_schedules (context_from_schedule_id) "
        "WHERE context_from_schedule_id IS NOT NULL",
    ),
    (
        """
        CREATE TABLE wake_fires (
            conversation_id UUID NOT NULL,
            fire_id UUID NOT NULL,
            schedule_id UUID,
            webhook_subscription_id UUID,
            scheduled_fire_at TIMESTAMPTZ,
            actual_fired_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            status TEXT NOT NULL,
            display_suppressed BOOLEAN NOT NULL DEFAULT false,
            output_text TEXT,
            latency_ms INTEGER,
            error TEXT,
            date_created TIMESTAMPTZ NOT NULL DEFAULT now(),
            CONSTRAINT wake_fires_pkey PRIMARY KEY (conversation_id, fire_id),
            CONSTRAINT wake_fires_fire_id_key UNIQUE (fire_id),
            CONSTRAINT wake_fires_schedule_fk FOREIGN KEY (schedule_id)
                REFERENCES agent_wake_schedules (schedule_id) ON DELETE CASCADE,
            CONSTRAINT wake_fires_one_source_check
                CHECK (NOT (schedule_id IS NOT NULL AND webhook_subscription_id IS NOT NULL)),
            CONSTRAINT wake_fires_status_check CHECK (status IN ('fired', 'fired_silent', 'yielded',
                'skipped_busy', 'skipped_rate_limit', 'skipped_cap', 'skipped_no_handler', 'failed'))
        )
        """,
        "CREATE INDEX idx_wake_fires_schedule_time ON wake_fires (schedule_id, actual_fired_at DESC) "
        "WHERE schedule_id IS NOT NULL",
        "CREATE INDEX idx_wake_fires_webhook_time ON wake_fires (webhook_subscription_id, actual_fired_at DESC) "
        "WHERE webhook_subscription_id IS NOT NULL",
        "CREATE INDEX idx_wake_fires_conv_time ON wake_fires (conversation_id, actual_fired_at DESC)",
    ),
    (
        """
        CREATE TABLE webhook_subscriptions (
            conversation_id UUID NOT NULL,
            subscription_id UUID NOT NULL,
            user_id UUID NOT NULL,
            agent_id UUID NOT NULL,
            default_skill_id UUID,
            name TEXT,
            secret_ciphertext BYTEA NOT NULL,
            allowed_source_pattern TEXT,
            execution_mode TEXT NOT NULL DEFAULT 'inline',
            task_prompt_template TEXT,
            verification_scheme TEXT NOT NULL DEFAULT 'generic_hmac_sha256',
            status TEXT NOT NULL DEFAULT 'active',
            rate_limit_per_minute INTEGER,
            last_fired_at TIMESTAMPTZ,
            date_created TIMESTAMPTZ NOT NULL DEFAULT now(),
            date_updated TIMESTAMPTZ NOT NULL DEFAULT now(),
            CONSTRAINT webhook_subscriptions_pkey PRIMARY KEY (conversation_id, subscription_id),
            CONSTRAINT webhook_subscriptions_subscription_id_key UNIQUE (subscription_id),
            CONSTRAINT webhook_subscriptions_default_skill_fk FOREIGN KEY (default_skill_id)
                REFERENCES agent_skills (skill_id) ON DELETE SET NULL,
            CONSTRAINT webhook_subscriptions_execution_mode_check CHECK (execution_mode IN ('inline', 'spawn')),
            CONSTRAINT webhook_subscriptions_verification_scheme_check
                CHECK (verification_scheme IN ('generic_hmac_sha256')),
            CONSTRAINT webhook_subscriptions_status_check CHECK (status IN ('active', 'paused'))
        )
        """,
        "CREATE INDEX idx_webhook_subs_conv ON webhook_subscriptions (conversation_id, status)",
        "CREATE INDEX idx_webhook_subs_user ON webhook_subscriptions (user_id)",
        "ALTER TABLE wake_fires ADD CONSTRAINT wake_fires_webhook_subscription_fk "
        "FOREIGN KEY (webhook_subscription_id) REFERENCES webhook_subscriptions (subscription_id) ON DELETE SET NULL",
    ),
    (
        "ALTER TABLE wake_fires DROP CONSTRAINT wake_fires_status_check",
        "ALTER TABLE wake_fires ADD CONSTRAINT wake_fires_status_check CHECK (status IN ('dispatching', 'fired', "
        "'fired_silent', 'yielded', 'skipped_busy', 'skipped_rate_limit', 'skipped_cap', 'skipped_no_handler', "
        "'failed'))",
    ),
    (
        "ALTER TABLE webhook_subscriptions DROP CONSTRAINT webhook_subscriptions_verification_scheme_check",
        "ALTER TABLE webhook_subscriptions ADD CONSTRAINT webhook_subscriptions_verification_scheme_check "
        "CHECK (verification_scheme ~ '^[a-z0-9_]+$' AND length(verification_scheme) BETWEEN 1 AND 64)",
    ),
    ("ALTER TABLE agent_wake_schedules ADD COLUMN include_conversation_history BOOLEAN NOT NULL DEFAULT true",),
)


async def build_with_older_runner(url: str, *, schema: str = "public", through_step: int = 6) -> None:
    """Build ``schema`` (created if missing) as the older runner left it after ``through_step`` (0 to 6).

    Step 0 has the ledger and the upstream tables only. Refuses a schema
    that is not a plain identifier and a step outside 0 to 6
    (``InvalidInputError`` / ``ValueError``); the upstream tables must not
    exist yet.
    """
    validate_schema_name(schema)
    if not 0 <= through_step <= len(_older_runner.STEPS):
        raise ValueError(f"through_step must be 0 to {len(_older_runner.STEPS)}, got {through_step}")
    engine = create_async_engine(resolve_database_url(url), poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await connection.exec_driver_sql(f'SET search_path TO "{schema}", public')
            key = _older_runner.lock_key(schema)
            await connection.execute(
                text("SELECT pg_advisory_lock(:namespace, :key)"),
                {"namespace": _older_runner.LOCK_NAMESPACE, "key": key},
            )
            await connection.exec_driver_sql(_LEDGER)
            for statement in _UPSTREAM:
                await connection.exec_driver_sql(statement)
            record = text("INSERT INTO _schema_migrations (version, package, description) VALUES (:v, :p, :d)")
            for package, version in _UPSTREAM_LEDGER:
                await connection.execute(record, {"v": version, "p": package, "d": f"{package}_step_{version}"})
            for version, statements in enumerate(OLDER_RUNNER_STEP_DDL[:through_step], start=1):
                for statement in statements:
                    await connection.exec_driver_sql(statement)
                await connection.execute(
                    record,
                    {"v": version, "p": _older_runner.LEDGER_PACKAGE, "d": _older_runner.STEPS[version - 1]},
                )
            await connection.execute(
                text("SELECT pg_advisory_unlock(:namespace, :key)"),
                {"namespace": _older_runner.LOCK_NAMESPACE, "key": key},
            )
    finally:
        await engine.dispose()
