"""What the older migration runner built, as adoption reads it: its ledger,
its lock, its agent schemas, and the shape of the wake tables after each of
its six steps (from ``shared/schema.md``; revision ``agent_wake_000N`` is
step N).

These are facts about databases that already exist, so they are written
out here rather than derived from our revisions; a test holds our revisions
to them step by step.
"""

import hashlib
from typing import Final

from alembic import context
from alembic.util import CommandError
from sqlalchemy import Connection, text

from agent_wake._catalog import Column, TableShape

__all__ = [
    "LEDGER_PACKAGE",
    "LEDGER_TABLE",
    "LOCK_NAMESPACE",
    "STEPS",
    "WAKE_TABLES",
    "lock_key",
    "refuse_a_schema_the_runner_built",
    "revision_for_step",
    "shape_after_step",
]

LEDGER_TABLE: Final = "_schema_migrations"
LEDGER_PACKAGE: Final = "agent_wake"
# The step functions' names, which the runner records as descriptions; step N is STEPS[N - 1].
STEPS: Final = (
    "create_agent_wake_schedules",
    "create_wake_fires",
    "create_webhook_subscriptions",
    "add_dispatching_status",
    "open_verification_scheme_check",
    "add_include_conversation_history",
)
LOCK_NAMESPACE: Final = 0x3EA510C
WAKE_TABLES: Final = ("agent_wake_schedules", "wake_fires", "webhook_subscriptions")


def lock_key(schema: str) -> int:
    """The second key of the runner's ``pg_advisory_lock(LOCK_NAMESPACE, key)`` on ``schema``:
    the first four bytes of the SHA-256 of the name, big-endian, masked to 31 bits."""
    return int.from_bytes(hashlib.sha256(schema.encode("utf-8")).digest()[:4], "big") & 0x7FFFFFFF


def refuse_a_schema_the_runner_built(connection: Connection, *, only_with_wake_tables: bool = False) -> None:
    """Called first by the revisions that create tables from nothing: on a
    schema the older runner built, they would fail on its tables with a long
    traceback. ``CommandError`` is what Alembic's command line prints as one
    line. Does nothing offline (``--sql``), where there is no schema to read.
    ``only_with_wake_tables``: refuse only when the ledger records an
    agent_wake step (our first revision, which also runs on a schema adopted
    at step 0, where the runner made only the upstream tables).
    """
    if context.is_offline_mode():
        return
    ledger = connection.execute(
        text(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = :ledger AND n.nspname = current_schema()"
        ),
        {"ledger": LEDGER_TABLE},
    ).scalar()
    if ledger is None:
        return
    step = connection.execute(
        # Unqualified: the ledger was found in current_schema(), first on the search_path.
        text(f"SELECT coalesce(max(version), 0) FROM {LEDGER_TABLE} WHERE package = :package"),
        {"package": LEDGER_PACKAGE},
    ).scalar_one()
    if only_with_wake_tables and step == 0:
        return
    raise CommandError(
        f"schema {ledger} was built by the older migration runner (its {LEDGER_TABLE} records agent_wake step "
        f"{step}) and has no alembic_version: adopt it instead of upgrading from nothing, with "
        f"`agent-wake adopt --schemas {ledger}` (it checks the tables and stamps {revision_for_step(step)}), "
        "then `agent-wake upgrade --schemas " + ledger + "`"
    )


def revision_for_step(step: int) -> str:
    """Our revision for the runner's ``step``: ``agent_wake_000N``, or the upstream junction for step 0."""
    return f"agent_wake_{step:04d}" if step else "agent_wake_upstream"


_UUID = "uuid"
_TEXT = "text"
_MOMENT = "timestamp with time zone"
_NOW = "now()"
_INLINE = "'inline'::text"
_ACTIVE = "'active'::text"
_EXECUTION_MODE_CHECK = "CHECK ((execution_mode = ANY (ARRAY['inline'::text, 'spawn'::text])))"
_FIRE_STATUSES_BEFORE_STEP_4 = (
    "'fired'::text, 'fired_silent'::text, 'yielded'::text, 'skipped_busy'::text, 'skipped_rate_limit'::text, "
    "'skipped_cap'::text, 'skipped_no_handler'::text, 'failed'::text"
)

_SCHEDULES = TableShape(
    columns=(
        Column("conversation_id", _UUID, False),
        Column("schedule_id", _UUID, False),
        Column("user_id", _UUID, False),
        Column("agent_id", _UUID, False),
        Column("skill_id", _UUID, True),
        Column("schedule_type", _TEXT, False),
        Column("schedule_config", "jsonb", False, "'{}'::jsonb"),
        Column("task_prompt", _TEXT, True),
        Column("execution_mode", _TEXT, False, _INLINE),
        Column("status", _TEXT, False, _ACTIVE),
        Column("next_fire_at", _MOMENT, True),
        Column("last_fired_at", _MOMENT, True),
        Column("name", _TEXT, True),
        Column("missed_fire_policy", _TEXT, False, "'coalesce'::text"),
        Column("context_from_schedule_id", _UUID, True),
        Column("date_created", _MOMENT, False, _NOW),
        Column("date_updated", _MOMENT, False, _NOW),
    ),
    constraints={
        "agent_wake_schedules_pkey": "PRIMARY KEY (conversation_id, schedule_id)",
        "agent_wake_schedules_schedule_id_key": "UNIQUE (schedule_id)",
        "agent_wake_schedules_skill_fk": "FOREIGN KEY (skill_id) REFERENCES agent_skills(skill_id) ON DELETE SET NULL",
        "agent_wake_schedules_context_from_fk": (
            "FOREIGN KEY (context_from_schedule_id) REFERENCES agent_wake_schedules(schedule_id) ON DELETE SET NULL"
        ),
        "agent_wake_schedules_execution_mode_check": _EXECUTION_MODE_CHECK,
        "agent_wake_schedules_status_check": (
            "CHECK ((status = ANY (ARRAY['active'::text, 'paused'::text, 'expired'::text])))"
        ),
        "agent_wake_schedules_missed_fire_policy_check": (
            "CHECK ((missed_fire_policy = ANY (ARRAY['coalesce'::text, 'catch_up'::text])))"
        ),
    },
    indexes={
        "idx_wake_schedules_next_fire": (
            "CREATE INDEX idx_wake_schedules_next_fire ON agent_wake_schedules USING btree (next_fire_at) "
            "WHERE ((status = 'active'::text) AND (next_fire_at IS NOT NULL))"
        ),
        "idx_wake_schedules_conv_status": (
            "CREATE INDEX idx_wake_schedules_conv_status ON agent_wake_schedules USING btree (conversation_id, status)"
        ),
        "idx_wake_schedules_user": "CREATE INDEX idx_wake_schedules_user ON agent_wake_schedules USING btree (user_id)",
        "idx_wake_schedules_context_from": (
            "CREATE INDEX idx_wake_schedules_context_from ON agent_wake_schedules USING btree "
            "(context_from_schedule_id) WHERE (context_from_schedule_id IS NOT NULL)"
        ),
    },
)
_FIRES = TableShape(
    columns=(
        Column("conversation_id", _UUID, False),
        Column("fire_id", _UUID, False),
        Column("schedule_id", _UUID, True),
        Column("webhook_subscription_id", _UUID, True),
        Column("scheduled_fire_at", _MOMENT, True),
        Column("actual_fired_at", _MOMENT, False, _NOW),
        Column("status", _TEXT, False),
        Column("display_suppressed", "boolean", False, "false"),
        Column("output_text", _TEXT, True),
        Column("latency_ms", "integer", True),
        Column("error", _TEXT, True),
        Column("date_created", _MOMENT, False, _NOW),
    ),
    constraints={
        "wake_fires_pkey": "PRIMARY KEY (conversation_id, fire_id)",
        "wake_fires_fire_id_key": "UNIQUE (fire_id)",
        "wake_fires_schedule_fk": (
            "FOREIGN KEY (schedule_id) REFERENCES agent_wake_schedules(schedule_id) ON DELETE CASCADE"
        ),
        "wake_fires_one_source_check": (
            "CHECK ((NOT ((schedule_id IS NOT NULL) AND (webhook_subscription_id IS NOT NULL))))"
        ),
        "wake_fires_status_check": f"CHECK ((status = ANY (ARRAY[{_FIRE_STATUSES_BEFORE_STEP_4}])))",
    },
    indexes={
        "idx_wake_fires_schedule_time": (
            "CREATE INDEX idx_wake_fires_schedule_time ON wake_fires USING btree (schedule_id, actual_fired_at DESC) "
            "WHERE (schedule_id IS NOT NULL)"
        ),
        "idx_wake_fires_webhook_time": (
            "CREATE INDEX idx_wake_fires_webhook_time ON wake_fires USING btree "
            "(webhook_subscription_id, actual_fired_at DESC) WHERE (webhook_subscription_id IS NOT NULL)"
        ),
        "idx_wake_fires_conv_time": (
            "CREATE INDEX idx_wake_fires_conv_time ON wake_fires USING btree (conversation_id, actual_fired_at DESC)"
        ),
    },
)
_SUBSCRIPTIONS = TableShape(
    columns=(
        Column("conversation_id", _UUID, False),
        Column("subscription_id", _UUID, False),
        Column("user_id", _UUID, False),
        Column("agent_id", _UUID, False),
        Column("default_skill_id", _UUID, True),
        Column("name", _TEXT, True),
        Column("secret_ciphertext", "bytea", False),
        Column("allowed_source_pattern", _TEXT, True),
        Column("execution_mode", _TEXT, False, _INLINE),
        Column("task_prompt_template", _TEXT, True),
        Column("verification_scheme", _TEXT, False, "'generic_hmac_sha256'::text"),
        Column("status", _TEXT, False, _ACTIVE),
        Column("rate_limit_per_minute", "integer", True),
        Column("last_fired_at", _MOMENT, True),
        Column("date_created", _MOMENT, False, _NOW),
        Column("date_updated", _MOMENT, False, _NOW),
    ),
    constraints={
        "webhook_subscriptions_pkey": "PRIMARY KEY (conversation_id, subscription_id)",
        "webhook_subscriptions_subscription_id_key": "UNIQUE (subscription_id)",
        "webhook_subscriptions_default_skill_fk": (
            "FOREIGN KEY (default_skill_id) REFERENCES agent_skills(skill_id) ON DELETE SET NULL"
        ),
        "webhook_subscriptions_execution_mode_check": _EXECUTION_MODE_CHECK,
        # PostgreSQL stores a one-item IN list as an equality.
        "webhook_subscriptions_verification_scheme_check": (
            "CHECK ((verification_scheme = 'generic_hmac_sha256'::text))"
        ),
        "webhook_subscriptions_status_check": "CHECK ((status = ANY (ARRAY['active'::text, 'paused'::text])))",
    },
    indexes={
        "idx_webhook_subs_conv": (
            "CREATE INDEX idx_webhook_subs_conv ON webhook_subscriptions USING btree (conversation_id, status)"
        ),
        "idx_webhook_subs_user": "CREATE INDEX idx_webhook_subs_user ON webhook_subscriptions USING btree (user_id)",
    },
)


def shape_after_step(step: int) -> dict[str, TableShape]:
    """The wake tables as the runner leaves them after ``step`` (0 to 6); step 0 has none."""
    if not 0 <= step <= len(STEPS):
        raise ValueError(f"the older runner has steps 0 to {len(STEPS)}, not {step}")
    shapes: dict[str, TableShape] = {}
    if step >= 1:
        shapes["agent_wake_schedules"] = _SCHEDULES
    if step >= 2:
        shapes["wake_fires"] = _FIRES
    if step >= 3:
        shapes["webhook_subscriptions"] = _SUBSCRIPTIONS
        shapes["wake_fires"] = _with_constraint(
            shapes["wake_fires"],
            "wake_fires_webhook_subscription_fk",
            "FOREIGN KEY (webhook_subscription_id) REFERENCES webhook_subscriptions(subscription_id) "
            "ON DELETE SET NULL",
        )
    if step >= 4:
        shapes["wake_fires"] = _with_constraint(
            shapes["wake_fires"],
            "wake_fires_status_check",
            f"CHECK ((status = ANY (ARRAY['dispatching'::text, {_FIRE_STATUSES_BEFORE_STEP_4}])))",
        )
    if step >= 5:
        shapes["webhook_subscriptions"] = _with_constraint(
            shapes["webhook_subscriptions"],
            "webhook_subscriptions_verification_scheme_check",
            "CHECK (((verification_scheme ~ '^[a-z0-9_]+$'::text) AND "
            "((length(verification_scheme) >= 1) AND (length(verification_scheme) <= 64))))",
        )
    if step >= 6:
        schedules = shapes["agent_wake_schedules"]
        shapes["agent_wake_schedules"] = TableShape(
            (*schedules.columns, Column("include_conversation_history", "boolean", False, "true")),
            schedules.constraints,
            schedules.indexes,
        )
    return shapes


def _with_constraint(shape: TableShape, name: str, definition: str) -> TableShape:
    return TableShape(shape.columns, {**shape.constraints, name: definition}, shape.indexes)
