"""The models, the migrated database and the reference schema agree; the
wake metadata holds only the wake tables."""

from typing import cast

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Table, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateTable

from agent_wake import Base, StandinBase, WakeSchedule, WebhookSubscription
from tests.conftest import ScratchDatabases

# Written by hand from shared/schema.md, in the form pg_get_constraintdef and
# pg_get_indexdef print; not derived from the package.
EXPECTED_CONSTRAINTS = {
    "agent_wake_schedules": {
        "agent_wake_schedules_pkey": "PRIMARY KEY (conversation_id, schedule_id)",
        "agent_wake_schedules_schedule_id_key": "UNIQUE (schedule_id)",
        "agent_wake_schedules_skill_fk": (
            "FOREIGN KEY (skill_id) REFERENCES agent_skills(skill_id) ON DELETE SET NULL"
        ),
        "agent_wake_schedules_context_from_fk": (
            "FOREIGN KEY (context_from_schedule_id) REFERENCES agent_wake_schedules(schedule_id) ON DELETE SET NULL"
        ),
        "agent_wake_schedules_execution_mode_check": (
            "CHECK ((execution_mode = ANY (ARRAY['inline'::text, 'spawn'::text])))"
        ),
        "agent_wake_schedules_status_check": (
            "CHECK ((status = ANY (ARRAY['active'::text, 'paused'::text, 'expired'::text])))"
        ),
        "agent_wake_schedules_missed_fire_policy_check": (
            "CHECK ((missed_fire_policy = ANY (ARRAY['coalesce'::text, 'catch_up'::text])))"
        ),
    },
    "wake_fires": {
        "wake_fires_pkey": "PRIMARY KEY (conversation_id, fire_id)",
        "wake_fires_fire_id_key": "UNIQUE (fire_id)",
        "wake_fires_schedule_fk": (
            "FOREIGN KEY (schedule_id) REFERENCES agent_wake_schedules(schedule_id) ON DELETE CASCADE"
        ),
        "wake_fires_webhook_subscription_fk": (
            "FOREIGN KEY (webhook_subscription_id) REFERENCES webhook_subscriptions(subscription_id) ON DELETE SET NULL"
        ),
        "wake_fires_one_source_check": (
            "CHECK ((NOT ((schedule_id IS NOT NULL) AND (webhook_subscription_id IS NOT NULL))))"
        ),
        "wake_fires_status_check": (
            "CHECK ((status = ANY (ARRAY['dispatching'::text, 'fired'::text, 'fired_silent'::text, "
            "'yielded'::text, 'skipped_busy'::text, 'skipped_rate_limit'::text, 'skipped_cap'::text, "
            "'skipped_no_handler'::text, 'failed'::text])))"
        ),
    },
    "webhook_subscriptions": {
        "webhook_subscriptions_pkey": "PRIMARY KEY (conversation_id, subscription_id)",
        "webhook_subscriptions_subscription_id_key": "UNIQUE (subscription_id)",
        "webhook_subscriptions_default_skill_fk": (
            "FOREIGN KEY (default_skill_id) REFERENCES agent_skills(skill_id) ON DELETE SET NULL"
        ),
        "webhook_subscriptions_execution_mode_check": (
            "CHECK ((execution_mode = ANY (ARRAY['inline'::text, 'spawn'::text])))"
        ),
        "webhook_subscriptions_verification_scheme_check": (
            "CHECK (((verification_scheme ~ '^[a-z0-9_]+$'::text) AND "
            "((length(verification_scheme) >= 1) AND (length(verification_scheme) <= 64))))"
        ),
        "webhook_subscriptions_status_check": ("CHECK ((status = ANY (ARRAY['active'::text, 'paused'::text])))"),
    },
    "conversations": {"conversations_pkey": "PRIMARY KEY (agent_id, conversation_id)"},
    "agent_skills": {
        "agent_skills_pkey": "PRIMARY KEY (agent_id, skill_id)",
        "agent_skills_skill_id_key": "UNIQUE (skill_id)",
    },
}

EXPECTED_INDEXES = {
    "idx_wake_schedules_next_fire": (
        "ON public.agent_wake_schedules USING btree (next_fire_at) "
        "WHERE ((status = 'active'::text) AND (next_fire_at IS NOT NULL))"
    ),
    "idx_wake_schedules_conv_status": ("ON public.agent_wake_schedules USING btree (conversation_id, status)"),
    "idx_wake_schedules_user": "ON public.agent_wake_schedules USING btree (user_id)",
    "idx_wake_schedules_context_from": (
        "ON public.agent_wake_schedules USING btree (context_from_schedule_id) "
        "WHERE (context_from_schedule_id IS NOT NULL)"
    ),
    "idx_wake_fires_schedule_time": (
        "ON public.wake_fires USING btree (schedule_id, actual_fired_at DESC) WHERE (schedule_id IS NOT NULL)"
    ),
    "idx_wake_fires_webhook_time": (
        "ON public.wake_fires USING btree (webhook_subscription_id, actual_fired_at DESC) "
        "WHERE (webhook_subscription_id IS NOT NULL)"
    ),
    "idx_wake_fires_conv_time": "ON public.wake_fires USING btree (conversation_id, actual_fired_at DESC)",
    "idx_webhook_subs_conv": "ON public.webhook_subscriptions USING btree (conversation_id, status)",
    "idx_webhook_subs_user": "ON public.webhook_subscriptions USING btree (user_id)",
    # Step 7, after the reference schema's six steps: one fire per period, and
    # the crash-recovery scan.
    "idx_wake_fires_schedule_period": (
        "ON public.wake_fires USING btree (conversation_id, schedule_id, scheduled_fire_at) "
        "WHERE (schedule_id IS NOT NULL)"
    ),
    "idx_wake_fires_dispatching": (
        "ON public.wake_fires USING btree (actual_fired_at) WHERE (status = 'dispatching'::text)"
    ),
}

# (column, type, nullable, default) per table, from shared/schema.md.
EXPECTED_COLUMNS = {
    "agent_wake_schedules": [
        ("conversation_id", "uuid", False, None),
        ("schedule_id", "uuid", False, None),
        ("user_id", "uuid", False, None),
        ("agent_id", "uuid", False, None),
        ("skill_id", "uuid", True, None),
        ("schedule_type", "text", False, None),
        ("schedule_config", "jsonb", False, "'{}'::jsonb"),
        ("task_prompt", "text", True, None),
        ("execution_mode", "text", False, "'inline'::text"),
        ("status", "text", False, "'active'::text"),
        ("next_fire_at", "timestamp with time zone", True, None),
        ("last_fired_at", "timestamp with time zone", True, None),
        ("name", "text", True, None),
        ("missed_fire_policy", "text", False, "'coalesce'::text"),
        ("context_from_schedule_id", "uuid", True, None),
        ("date_created", "timestamp with time zone", False, "now()"),
        ("date_updated", "timestamp with time zone", False, "now()"),
        # Added by step 6, so it comes last in a migrated table.
        ("include_conversation_history", "boolean", False, "true"),
    ],
    "wake_fires": [
        ("conversation_id", "uuid", False, None),
        ("fire_id", "uuid", False, None),
        ("schedule_id", "uuid", True, None),
        ("webhook_subscription_id", "uuid", True, None),
        ("scheduled_fire_at", "timestamp with time zone", True, None),
        ("actual_fired_at", "timestamp with time zone", False, "now()"),
        ("status", "text", False, None),
        ("display_suppressed", "boolean", False, "false"),
        ("output_text", "text", True, None),
        ("latency_ms", "integer", True, None),
        ("error", "text", True, None),
        ("date_created", "timestamp with time zone", False, "now()"),
    ],
    "webhook_subscriptions": [
        ("conversation_id", "uuid", False, None),
        ("subscription_id", "uuid", False, None),
        ("user_id", "uuid", False, None),
        ("agent_id", "uuid", False, None),
        ("default_skill_id", "uuid", True, None),
        ("name", "text", True, None),
        ("secret_ciphertext", "bytea", False, None),
        ("allowed_source_pattern", "text", True, None),
        ("execution_mode", "text", False, "'inline'::text"),
        ("task_prompt_template", "text", True, None),
        ("verification_scheme", "text", False, "'generic_hmac_sha256'::text"),
        ("status", "text", False, "'active'::text"),
        ("rate_limit_per_minute", "integer", True, None),
        ("last_fired_at", "timestamp with time zone", True, None),
        ("date_created", "timestamp with time zone", False, "now()"),
        ("date_updated", "timestamp with time zone", False, "now()"),
    ],
}


def _differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_server_default": True})
    return list(compare_metadata(context, [StandinBase.metadata, Base.metadata]))


def _create_stand_ins_then_wake_tables(connection: Connection) -> None:
    StandinBase.metadata.create_all(connection)
    Base.metadata.create_all(connection)


async def _constraints(connection: AsyncConnection) -> dict[str, dict[str, str]]:
    rows = await connection.execute(
        text(
            "SELECT rel.relname, con.conname, pg_get_constraintdef(con.oid) "
            "FROM pg_constraint con JOIN pg_class rel ON rel.oid = con.conrelid "
            "JOIN pg_namespace ns ON ns.oid = rel.relnamespace "
            "WHERE ns.nspname = 'public' AND rel.relname = ANY(:tables)"
        ),
        {"tables": list(EXPECTED_CONSTRAINTS)},
    )
    actual: dict[str, dict[str, str]] = {}
    for table, name, definition in rows:
        actual.setdefault(table, {})[name] = definition
    return actual


async def _indexes(connection: AsyncConnection) -> dict[str, str]:
    rows = await connection.execute(
        text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND indexname LIKE 'idx\\_%'")
    )
    return {name: definition.split(f"{name} ", 1)[1] for name, definition in rows}


def test_wake_metadata_holds_only_the_three_wake_tables() -> None:
    # A host hands Base.metadata to Alembic beside its own metadata, which
    # has its own conversations and agent_skills: Alembic refuses a table
    # defined twice.
    assert set(Base.metadata.tables) == {"agent_wake_schedules", "wake_fires", "webhook_subscriptions"}
    assert set(StandinBase.metadata.tables) == {"conversations", "agent_skills"}


def test_skill_foreign_keys_render_against_agent_skills_outside_the_wake_metadata() -> None:
    schedules = str(CreateTable(cast(Table, WakeSchedule.__table__)).compile(dialect=postgresql.dialect()))
    subscriptions = str(CreateTable(cast(Table, WebhookSubscription.__table__)).compile(dialect=postgresql.dialect()))
    assert (
        "CONSTRAINT agent_wake_schedules_skill_fk FOREIGN KEY(skill_id) "
        "REFERENCES agent_skills (skill_id) ON DELETE SET NULL"
    ) in schedules
    assert (
        "CONSTRAINT webhook_subscriptions_default_skill_fk FOREIGN KEY(default_skill_id) "
        "REFERENCES agent_skills (skill_id) ON DELETE SET NULL"
    ) in subscriptions


async def test_models_and_migrated_database_have_no_autogenerate_difference(wake_engine: AsyncEngine) -> None:
    async with wake_engine.connect() as connection:
        differences = await connection.run_sync(_differences)
    assert differences == []


async def test_create_all_from_the_models_builds_the_reference_constraints_and_indexes(
    scratch_databases: ScratchDatabases,
) -> None:
    engine = create_async_engine(await scratch_databases.create())
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_create_stand_ins_then_wake_tables)
        async with engine.connect() as connection:
            assert await _constraints(connection) == EXPECTED_CONSTRAINTS
            assert await _indexes(connection) == EXPECTED_INDEXES
            assert await connection.run_sync(_differences) == []
    finally:
        await engine.dispose()


async def test_constraints_match_the_reference_schema(wake_engine: AsyncEngine) -> None:
    async with wake_engine.connect() as connection:
        assert await _constraints(connection) == EXPECTED_CONSTRAINTS


async def test_indexes_match_the_reference_schema(wake_engine: AsyncEngine) -> None:
    async with wake_engine.connect() as connection:
        actual = await _indexes(connection)
        unique = await connection.execute(
            text("SELECT indexname FROM pg_indexes WHERE indexdef LIKE 'CREATE UNIQUE INDEX idx\\_%'")
        )
        assert set(unique.scalars()) == {"idx_wake_fires_schedule_period"}
    assert actual == EXPECTED_INDEXES


async def test_columns_match_the_reference_schema(wake_engine: AsyncEngine) -> None:
    async with wake_engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT table_name, column_name, data_type, is_nullable = 'YES', column_default "
                "FROM information_schema.columns WHERE table_schema = 'public' "
                "AND table_name = ANY(:tables) ORDER BY table_name, ordinal_position"
            ),
            {"tables": list(EXPECTED_COLUMNS)},
        )
        actual: dict[str, list[tuple[str, str, bool, str | None]]] = {}
        for table, column, data_type, nullable, default in rows:
            actual.setdefault(table, []).append((column, data_type, nullable, default))
    assert actual == EXPECTED_COLUMNS
