"""The SQL of every prebuilt statement, pinned, and the plans PostgreSQL makes of the hot ones.

Column lists are left out (they follow the models). What follows FROM, or a
DML statement up to RETURNING, is written here by hand and was reviewed for
the partition pin and the index each statement is meant to use, so that a
change to any of them shows up in review. A statement added to
``agent_wake._statements.PREBUILT`` fails here until it is pinned.
"""

import uuid
from typing import Any

import pytest
from sqlalchemy import Executable, text
from sqlalchemy.ext.asyncio import AsyncSession

from agent_wake import WakeFireRepository, WakeScheduleRepository, WebhookSubscriptionRepository, spans_partitions
from agent_wake._statements import PREBUILT, for_driver
from agent_wake.testing import capture_sql
from tests.clock import NOW

PINNED: dict[str, str] = {
    "schedules.create": (
        "INSERT INTO agent_wake_schedules (conversation_id, schedule_id, user_id, agent_id, skill_id, "
        "schedule_type, schedule_config, task_prompt, execution_mode, status, next_fire_at, name, "
        "missed_fire_policy, context_from_schedule_id, include_conversation_history) VALUES ($1::UUID, "
        "$2::UUID, $3::UUID, $4::UUID, $5::UUID, $6::VARCHAR, $7::JSONB, $8::VARCHAR, $9::VARCHAR, "
        "$10::VARCHAR, $11::TIMESTAMP WITH TIME ZONE, $12::VARCHAR, $13::VARCHAR, $14::UUID, $15::BOOLEAN)"
    ),
    "subscriptions.create": (
        "INSERT INTO webhook_subscriptions (conversation_id, subscription_id, user_id, agent_id, "
        "default_skill_id, name, secret_ciphertext, allowed_source_pattern, execution_mode, "
        "task_prompt_template, verification_scheme, status, rate_limit_per_minute) VALUES ($1::UUID, "
        "$2::UUID, $3::UUID, $4::UUID, $5::UUID, $6::VARCHAR, $7::BYTEA, $8::VARCHAR, $9::VARCHAR, "
        "$10::VARCHAR, $11::VARCHAR, $12::VARCHAR, $13::INTEGER)"
    ),
    "schedules.get": (
        "agent_wake_schedules \nWHERE agent_wake_schedules.conversation_id = $1::UUID AND "
        "agent_wake_schedules.schedule_id = $2::UUID"
    ),
    "schedules.list_for_conversation": (
        "agent_wake_schedules \nWHERE agent_wake_schedules.conversation_id = $1::UUID ORDER BY "
        "agent_wake_schedules.date_created DESC, agent_wake_schedules.schedule_id DESC \n LIMIT "
        "$2::INTEGER"
    ),
    "schedules.delete": (
        "WITH unlinked AS \n(UPDATE agent_wake_schedules SET context_from_schedule_id=NULL, "
        "date_updated=agent_wake_schedules.date_updated WHERE agent_wake_schedules.conversation_id = "
        "$1::UUID AND agent_wake_schedules.context_from_schedule_id = $2::UUID AND "
        "agent_wake_schedules.schedule_id != $2::UUID)\n DELETE FROM agent_wake_schedules WHERE "
        "agent_wake_schedules.conversation_id = $1::UUID AND agent_wake_schedules.schedule_id = "
        "$2::UUID"
    ),
    "fires.get": ("wake_fires \nWHERE wake_fires.conversation_id = $1::UUID AND wake_fires.fire_id = $2::UUID"),
    "fires.list_for_conversation": (
        "wake_fires \nWHERE wake_fires.conversation_id = $1::UUID ORDER BY wake_fires.actual_fired_at "
        "DESC, wake_fires.fire_id DESC \n LIMIT $2::INTEGER"
    ),
    "fires.delete": (
        "DELETE FROM wake_fires WHERE wake_fires.conversation_id = $1::UUID AND wake_fires.fire_id = $2::UUID"
    ),
    "subscriptions.get": (
        "webhook_subscriptions \nWHERE webhook_subscriptions.conversation_id = $1::UUID AND "
        "webhook_subscriptions.subscription_id = $2::UUID"
    ),
    "subscriptions.list_for_conversation": (
        "webhook_subscriptions \nWHERE webhook_subscriptions.conversation_id = $1::UUID ORDER BY "
        "webhook_subscriptions.date_created DESC, webhook_subscriptions.subscription_id DESC \n LIMIT "
        "$2::INTEGER"
    ),
    "subscriptions.delete": (
        "WITH unlinked AS \n(UPDATE wake_fires SET webhook_subscription_id=NULL WHERE "
        "wake_fires.conversation_id = $1::UUID AND wake_fires.webhook_subscription_id = $2::UUID)\n "
        "DELETE FROM webhook_subscriptions WHERE webhook_subscriptions.conversation_id = $1::UUID "
        "AND webhook_subscriptions.subscription_id = $2::UUID"
    ),
    "schedules.list_active_for_conversation": (
        "agent_wake_schedules \nWHERE agent_wake_schedules.conversation_id = $1::UUID AND "
        "agent_wake_schedules.status = 'active' ORDER BY agent_wake_schedules.next_fire_at ASC NULLS "
        "LAST, agent_wake_schedules.schedule_id \n LIMIT $2::INTEGER"
    ),
    "schedules.count_active_for_conversation": (
        "agent_wake_schedules \nWHERE agent_wake_schedules.conversation_id = $1::UUID AND "
        "agent_wake_schedules.status = 'active'"
    ),
    "schedules.source_exists": (
        "agent_wake_schedules \nWHERE agent_wake_schedules.conversation_id = $1::UUID AND "
        "agent_wake_schedules.schedule_id = $2::UUID"
    ),
    "schedules.set_next_fire_if_active": (
        "UPDATE agent_wake_schedules SET next_fire_at=$1::TIMESTAMP WITH TIME ZONE, date_updated=now() "
        "WHERE agent_wake_schedules.conversation_id = $2::UUID AND agent_wake_schedules.schedule_id = "
        "$3::UUID AND agent_wake_schedules.status IN ('active')"
    ),
    "schedules.set_status_unless_expired": (
        "UPDATE agent_wake_schedules SET status=$1::VARCHAR, next_fire_at=$2::TIMESTAMP WITH TIME ZONE, "
        "date_updated=now() WHERE agent_wake_schedules.conversation_id = $3::UUID AND "
        "agent_wake_schedules.schedule_id = $4::UUID AND agent_wake_schedules.status IN ('active', "
        "'paused')"
    ),
    "schedules.set_status": (
        "UPDATE agent_wake_schedules SET status=$1::VARCHAR, next_fire_at=$2::TIMESTAMP WITH TIME ZONE, "
        "date_updated=now() WHERE agent_wake_schedules.conversation_id = $3::UUID AND "
        "agent_wake_schedules.schedule_id = $4::UUID"
    ),
    "subscriptions.set_status": (
        "UPDATE webhook_subscriptions SET status=$1::VARCHAR, date_updated=now() WHERE "
        "webhook_subscriptions.conversation_id = $2::UUID AND webhook_subscriptions.subscription_id = "
        "$3::UUID"
    ),
    "subscriptions.set_secret": (
        "UPDATE webhook_subscriptions SET secret_ciphertext=$1::BYTEA, date_updated=now() WHERE "
        "webhook_subscriptions.conversation_id = $2::UUID AND webhook_subscriptions.subscription_id = "
        "$3::UUID"
    ),
    "subscriptions.record_fire_if_active": (
        "UPDATE webhook_subscriptions SET last_fired_at=$1::TIMESTAMP WITH TIME ZONE, "
        "date_updated=now() WHERE webhook_subscriptions.conversation_id = $2::UUID AND "
        "webhook_subscriptions.subscription_id = $3::UUID AND webhook_subscriptions.status IN ('active')"
    ),
    "schedules.claim_and_reschedule": (
        "UPDATE agent_wake_schedules SET status=$1::VARCHAR, next_fire_at=$2::TIMESTAMP WITH TIME ZONE, "
        "last_fired_at=$3::TIMESTAMP WITH TIME ZONE, date_updated=now() WHERE "
        "agent_wake_schedules.conversation_id = $4::UUID AND agent_wake_schedules.schedule_id = "
        "$5::UUID AND agent_wake_schedules.status = 'active' AND agent_wake_schedules.next_fire_at = "
        "$6::TIMESTAMP WITH TIME ZONE"
    ),
    "schedules.list_due": (
        "agent_wake_schedules \nWHERE agent_wake_schedules.status = 'active' AND "
        "agent_wake_schedules.next_fire_at <= $1::TIMESTAMP WITH TIME ZONE ORDER BY "
        "agent_wake_schedules.next_fire_at, agent_wake_schedules.schedule_id \n LIMIT $2::INTEGER"
    ),
    "schedules.claim_lock": (
        "agent_wake_schedules \nWHERE agent_wake_schedules.status = 'active' AND "
        "agent_wake_schedules.next_fire_at <= $1::TIMESTAMP WITH TIME ZONE ORDER BY "
        "agent_wake_schedules.next_fire_at, agent_wake_schedules.schedule_id \n LIMIT $2::INTEGER FOR "
        "UPDATE SKIP LOCKED"
    ),
    "schedules.claim_lock_excluding": (
        "agent_wake_schedules \nWHERE agent_wake_schedules.status = 'active' AND "
        "agent_wake_schedules.next_fire_at <= $1::TIMESTAMP WITH TIME ZONE AND "
        "agent_wake_schedules.schedule_id != ALL ($2::UUID[]) ORDER BY "
        "agent_wake_schedules.next_fire_at, agent_wake_schedules.schedule_id \n LIMIT $3::INTEGER FOR "
        "UPDATE SKIP LOCKED"
    ),
    "schedules.citus_installed": "pg_extension \nWHERE pg_extension.extname = 'citus') AS anon_1",
    "schedules.hash_distributed": (
        "pg_dist_partition \nWHERE pg_dist_partition.logicalrelid = CAST('agent_wake_schedules' AS "
        "REGCLASS) AND pg_dist_partition.partmethod = 'h') AS anon_1"
    ),
    "schedules.claim_scan_sharded": (
        "agent_wake_schedules \nWHERE agent_wake_schedules.status = 'active' AND "
        "agent_wake_schedules.next_fire_at <= $1::TIMESTAMP WITH TIME ZONE ORDER BY "
        "agent_wake_schedules.next_fire_at, agent_wake_schedules.schedule_id \n LIMIT $2::INTEGER"
    ),
    "schedules.claim_scan_sharded_after": (
        "agent_wake_schedules \nWHERE agent_wake_schedules.status = 'active' AND "
        "agent_wake_schedules.next_fire_at <= $1::TIMESTAMP WITH TIME ZONE AND "
        "(agent_wake_schedules.next_fire_at, agent_wake_schedules.schedule_id) > ($2::TIMESTAMP WITH "
        "TIME ZONE, $3::UUID) ORDER BY agent_wake_schedules.next_fire_at, "
        "agent_wake_schedules.schedule_id \n LIMIT $4::INTEGER"
    ),
    "schedules.claim_lock_among": (
        "agent_wake_schedules \nWHERE agent_wake_schedules.status = 'active' AND "
        "agent_wake_schedules.next_fire_at <= $1::TIMESTAMP WITH TIME ZONE AND "
        "agent_wake_schedules.conversation_id = ANY ($2::UUID[]) AND agent_wake_schedules.schedule_id "
        "!= ALL ($3::UUID[]) ORDER BY agent_wake_schedules.next_fire_at, "
        "agent_wake_schedules.schedule_id \n LIMIT $4::INTEGER FOR UPDATE SKIP LOCKED"
    ),
    "schedules.claim_fires": (
        "INSERT INTO wake_fires (conversation_id, fire_id, schedule_id, webhook_subscription_id, "
        "scheduled_fire_at, actual_fired_at, status) SELECT claimed_fire.conversation_id, "
        "claimed_fire.fire_id, claimed_fire.schedule_id, NULL AS anon_1, "
        "claimed_fire.scheduled_fire_at, $1::TIMESTAMP WITH TIME ZONE AS anon_2, 'dispatching' \nFROM "
        "unnest($2::UUID[], $3::UUID[], $4::UUID[], $5::TIMESTAMP WITH TIME ZONE[]) AS "
        "claimed_fire(conversation_id, fire_id, schedule_id, scheduled_fire_at) ON CONFLICT "
        "(conversation_id, schedule_id, scheduled_fire_at) WHERE schedule_id IS NOT NULL DO NOTHING"
    ),
    "schedules.claim_reschedule": (
        "UPDATE agent_wake_schedules SET status=claimed.status, next_fire_at=claimed.next_fire_at, "
        "last_fired_at=claimed.last_fired_at, date_updated=now() FROM unnest($1::UUID[], $2::UUID[], "
        "$3::TIMESTAMP WITH TIME ZONE[], $4::TEXT[], $5::TIMESTAMP WITH TIME ZONE[]) AS "
        "claimed(conversation_id, schedule_id, next_fire_at, status, last_fired_at) WHERE "
        "agent_wake_schedules.conversation_id = ANY ($1::UUID[]) AND "
        "agent_wake_schedules.conversation_id = claimed.conversation_id AND "
        "agent_wake_schedules.schedule_id = claimed.schedule_id"
    ),
    "fires.list_for_schedule": (
        "wake_fires \nWHERE wake_fires.conversation_id = $1::UUID AND wake_fires.schedule_id = $2::UUID "
        "ORDER BY wake_fires.actual_fired_at DESC, wake_fires.fire_id DESC \n LIMIT $3::INTEGER"
    ),
    "fires.latest_for_schedule": (
        "wake_fires \nWHERE wake_fires.conversation_id = $1::UUID AND wake_fires.schedule_id = $2::UUID "
        "AND wake_fires.status = ANY ($3::TEXT[]) ORDER BY wake_fires.actual_fired_at DESC, "
        "wake_fires.fire_id DESC \n LIMIT $4::INTEGER"
    ),
    "fires.count_in_window": (
        "wake_fires \nWHERE wake_fires.conversation_id = $1::UUID AND wake_fires.actual_fired_at >= "
        "$2::TIMESTAMP WITH TIME ZONE AND wake_fires.status = ANY ($3::TEXT[])"
    ),
    "fires.create_dispatching_from_schedule": (
        "INSERT INTO wake_fires (conversation_id, fire_id, schedule_id, webhook_subscription_id, "
        "scheduled_fire_at, actual_fired_at, status) SELECT $1::UUID AS anon_1, $2::UUID AS anon_2, "
        "agent_wake_schedules.schedule_id, NULL AS anon_3, $3::TIMESTAMP WITH TIME ZONE AS anon_4, "
        "coalesce($4::TIMESTAMP WITH TIME ZONE, now()) AS coalesce_1, 'dispatching' \nFROM "
        "agent_wake_schedules \nWHERE agent_wake_schedules.conversation_id = $1::UUID AND "
        "agent_wake_schedules.schedule_id = $5::UUID"
    ),
    "fires.create_dispatching_from_subscription": (
        "INSERT INTO wake_fires (conversation_id, fire_id, schedule_id, webhook_subscription_id, "
        "scheduled_fire_at, actual_fired_at, status) SELECT $1::UUID AS anon_1, $2::UUID AS anon_2, "
        "NULL AS anon_3, webhook_subscriptions.subscription_id, $3::TIMESTAMP WITH TIME ZONE AS anon_4, "
        "coalesce($4::TIMESTAMP WITH TIME ZONE, now()) AS coalesce_1, 'dispatching' \nFROM "
        "webhook_subscriptions \nWHERE webhook_subscriptions.conversation_id = $1::UUID AND "
        "webhook_subscriptions.subscription_id = $5::UUID"
    ),
    "fires.finalize_success": (
        "UPDATE wake_fires SET status=$1::VARCHAR, display_suppressed=$2::BOOLEAN, "
        "output_text=$3::VARCHAR, latency_ms=$4::INTEGER WHERE wake_fires.conversation_id = $5::UUID "
        "AND wake_fires.fire_id = $6::UUID AND wake_fires.status IN ('dispatching')"
    ),
    "fires.finalize_failed": (
        "UPDATE wake_fires SET status=$1::VARCHAR, latency_ms=$2::INTEGER, error=$3::VARCHAR WHERE "
        "wake_fires.conversation_id = $4::UUID AND wake_fires.fire_id = $5::UUID AND wake_fires.status "
        "IN ('dispatching')"
    ),
    "fires.finalize_success_batch": (
        "UPDATE wake_fires SET status=outcome.status, display_suppressed=outcome.display_suppressed, "
        "output_text=outcome.output_text, latency_ms=outcome.latency_ms FROM unnest($1::UUID[], "
        "$2::UUID[], $3::TEXT[], $4::TEXT[], $5::INTEGER[], $6::BOOLEAN[]) AS outcome(conversation_id, "
        "fire_id, status, output_text, latency_ms, display_suppressed) WHERE wake_fires.conversation_id "
        "= ANY ($1::UUID[]) AND wake_fires.conversation_id = outcome.conversation_id AND "
        "wake_fires.fire_id = outcome.fire_id AND wake_fires.status = 'dispatching'"
    ),
    "fires.finalize_failed_batch": (
        "UPDATE wake_fires SET status=outcome.status, latency_ms=outcome.latency_ms, "
        "error=outcome.error FROM unnest($1::UUID[], $2::UUID[], $3::TEXT[], $4::TEXT[], $5::INTEGER[]) "
        "AS outcome(conversation_id, fire_id, status, error, latency_ms) WHERE "
        "wake_fires.conversation_id = ANY ($1::UUID[]) AND wake_fires.conversation_id = "
        "outcome.conversation_id AND wake_fires.fire_id = outcome.fire_id AND wake_fires.status = "
        "'dispatching'"
    ),
    "fires.list_stale_dispatching": (
        "wake_fires \nWHERE wake_fires.status = 'dispatching' AND wake_fires.actual_fired_at < "
        "$1::TIMESTAMP WITH TIME ZONE ORDER BY wake_fires.actual_fired_at, wake_fires.fire_id \n LIMIT "
        "$2::INTEGER"
    ),
    "subscriptions.find_by_id": (
        "webhook_subscriptions \nWHERE webhook_subscriptions.subscription_id = $1::UUID \n LIMIT $2::INTEGER"
    ),
    "subscriptions.secret_ciphertext": (
        "webhook_subscriptions \nWHERE webhook_subscriptions.conversation_id = $1::UUID AND "
        "webhook_subscriptions.subscription_id = $2::UUID"
    ),
    "fires.purge_conversation": ("DELETE FROM wake_fires WHERE wake_fires.conversation_id = $1::UUID"),
    "schedules.purge_conversation": (
        "DELETE FROM agent_wake_schedules WHERE agent_wake_schedules.conversation_id = $1::UUID"
    ),
    "subscriptions.purge_conversation": (
        "DELETE FROM webhook_subscriptions WHERE webhook_subscriptions.conversation_id = $1::UUID"
    ),
    "fires.count_prunable": (
        "wake_fires \nWHERE wake_fires.actual_fired_at < now() - $1::INTERVAL AND wake_fires.status "
        "!= 'dispatching' AND (wake_fires.schedule_id IS NULL OR (wake_fires.status NOT IN ('fired', "
        "'fired_silent')) OR (EXISTS (SELECT * \nFROM wake_fires AS later_output \nWHERE "
        "later_output.conversation_id IS NOT DISTINCT FROM wake_fires.conversation_id AND "
        "later_output.schedule_id = wake_fires.schedule_id AND later_output.status IN ('fired', "
        "'fired_silent') AND (later_output.actual_fired_at, later_output.fire_id) > "
        "(wake_fires.actual_fired_at, wake_fires.fire_id))))"
    ),
    "fires.prune": (
        "DELETE FROM wake_fires USING unnest(array((SELECT (candidate.conversation_id, "
        "candidate.fire_id) AS locked_key \nFROM wake_fires AS candidate \nWHERE "
        "candidate.conversation_id >= $1::UUID AND candidate.actual_fired_at < $2::TIMESTAMP WITH "
        "TIME ZONE AND candidate.status != 'dispatching' AND (candidate.schedule_id IS NULL OR "
        "(candidate.status NOT IN ('fired', 'fired_silent')) OR (EXISTS (SELECT * \nFROM wake_fires "
        "AS later_output \nWHERE later_output.conversation_id IS NOT DISTINCT FROM "
        "candidate.conversation_id AND later_output.schedule_id = candidate.schedule_id AND "
        "later_output.status IN ('fired', 'fired_silent') AND (later_output.actual_fired_at, "
        "later_output.fire_id) > (candidate.actual_fired_at, candidate.fire_id)))) ORDER BY "
        "candidate.conversation_id, candidate.actual_fired_at DESC \n LIMIT $3::INTEGER FOR UPDATE "
        "SKIP LOCKED))) AS chosen(conversation_id UUID, fire_id UUID) WHERE "
        "wake_fires.conversation_id = chosen.conversation_id AND wake_fires.fire_id = chosen.fire_id"
    ),
    "fires.count_orphans": (
        "wake_fires \nWHERE NOT (EXISTS (SELECT * \nFROM conversations \nWHERE "
        "conversations.conversation_id = wake_fires.conversation_id))"
    ),
    "schedules.count_orphans": (
        "agent_wake_schedules \nWHERE NOT (EXISTS (SELECT * \nFROM conversations \nWHERE "
        "conversations.conversation_id = agent_wake_schedules.conversation_id))"
    ),
    "subscriptions.count_orphans": (
        "webhook_subscriptions \nWHERE NOT (EXISTS (SELECT * \nFROM conversations \nWHERE "
        "conversations.conversation_id = webhook_subscriptions.conversation_id))"
    ),
    "fires.delete_orphans": (
        "DELETE FROM wake_fires USING unnest(array((SELECT (candidate.conversation_id, "
        "candidate.fire_id) AS locked_key \nFROM wake_fires AS candidate \nWHERE "
        "candidate.conversation_id >= $1::UUID AND NOT (EXISTS (SELECT * \nFROM conversations \nWHERE "
        "conversations.conversation_id = candidate.conversation_id)) ORDER BY "
        "candidate.conversation_id, candidate.fire_id \n LIMIT $2::INTEGER FOR UPDATE SKIP LOCKED))) "
        "AS chosen(conversation_id UUID, fire_id UUID) WHERE wake_fires.conversation_id = "
        "chosen.conversation_id AND wake_fires.fire_id = chosen.fire_id"
    ),
    "schedules.unlink_orphans": (
        "UPDATE agent_wake_schedules SET context_from_schedule_id=NULL, date_updated=now() FROM "
        "unnest(array((SELECT (candidate.conversation_id, candidate.schedule_id) AS locked_key \nFROM "
        "agent_wake_schedules AS candidate \nWHERE candidate.conversation_id >= $1::UUID AND NOT "
        "(EXISTS (SELECT * \nFROM conversations \nWHERE conversations.conversation_id = "
        "candidate.conversation_id)) AND candidate.context_from_schedule_id IS NOT NULL ORDER BY "
        "candidate.conversation_id, candidate.schedule_id \n LIMIT $2::INTEGER FOR UPDATE SKIP "
        "LOCKED))) AS chosen(conversation_id UUID, schedule_id UUID) WHERE "
        "agent_wake_schedules.conversation_id = chosen.conversation_id AND "
        "agent_wake_schedules.schedule_id = chosen.schedule_id"
    ),
    "schedules.delete_orphans": (
        "DELETE FROM agent_wake_schedules USING unnest(array((SELECT (candidate.conversation_id, "
        "candidate.schedule_id) AS locked_key \nFROM agent_wake_schedules AS candidate \nWHERE "
        "candidate.conversation_id >= $1::UUID AND NOT (EXISTS (SELECT * \nFROM conversations \nWHERE "
        "conversations.conversation_id = candidate.conversation_id)) AND NOT (EXISTS (SELECT * \nFROM "
        "wake_fires \nWHERE wake_fires.conversation_id = candidate.conversation_id AND "
        "wake_fires.schedule_id = candidate.schedule_id)) AND NOT (EXISTS (SELECT * \nFROM "
        "agent_wake_schedules AS reader \nWHERE reader.conversation_id = candidate.conversation_id "
        "AND reader.context_from_schedule_id = candidate.schedule_id)) ORDER BY "
        "candidate.conversation_id, candidate.schedule_id \n LIMIT $2::INTEGER FOR UPDATE SKIP "
        "LOCKED))) AS chosen(conversation_id UUID, schedule_id UUID) WHERE "
        "agent_wake_schedules.conversation_id = chosen.conversation_id AND "
        "agent_wake_schedules.schedule_id = chosen.schedule_id"
    ),
    "subscriptions.delete_orphans": (
        "DELETE FROM webhook_subscriptions USING unnest(array((SELECT (candidate.conversation_id, "
        "candidate.subscription_id) AS locked_key \nFROM webhook_subscriptions AS candidate \nWHERE "
        "candidate.conversation_id >= $1::UUID AND NOT (EXISTS (SELECT * \nFROM conversations \nWHERE "
        "conversations.conversation_id = candidate.conversation_id)) AND NOT (EXISTS (SELECT * \nFROM "
        "wake_fires \nWHERE wake_fires.conversation_id = candidate.conversation_id AND "
        "wake_fires.webhook_subscription_id = candidate.subscription_id)) ORDER BY "
        "candidate.conversation_id, candidate.subscription_id \n LIMIT $2::INTEGER FOR UPDATE SKIP "
        "LOCKED))) AS chosen(conversation_id UUID, subscription_id UUID) WHERE "
        "webhook_subscriptions.conversation_id = chosen.conversation_id AND "
        "webhook_subscriptions.subscription_id = chosen.subscription_id"
    ),
    "subscriptions.count": ("webhook_subscriptions"),
    "subscriptions.first_secrets": (
        "webhook_subscriptions ORDER BY webhook_subscriptions.conversation_id, "
        "webhook_subscriptions.subscription_id \n LIMIT $1::INTEGER"
    ),
    "subscriptions.secrets_after": (
        "webhook_subscriptions \nWHERE (webhook_subscriptions.conversation_id, "
        "webhook_subscriptions.subscription_id) > ($1::UUID, $2::UUID) ORDER BY "
        "webhook_subscriptions.conversation_id, webhook_subscriptions.subscription_id \n LIMIT "
        "$3::INTEGER"
    ),
    "subscriptions.reencrypt_secrets": (
        "UPDATE webhook_subscriptions SET secret_ciphertext=still_old.new_ciphertext, "
        "date_updated=now() FROM (SELECT locked.conversation_id AS conversation_id, "
        "locked.subscription_id AS subscription_id, rotated.new_ciphertext AS new_ciphertext \nFROM "
        "webhook_subscriptions AS locked JOIN unnest($1::UUID[], $2::UUID[], $3::BYTEA[], "
        "$4::BYTEA[]) AS rotated(conversation_id, subscription_id, old_ciphertext, new_ciphertext) ON"
        " locked.conversation_id = rotated.conversation_id AND locked.subscription_id = "
        "rotated.subscription_id AND locked.secret_ciphertext = rotated.old_ciphertext \nWHERE "
        "locked.conversation_id = ANY ($1::UUID[]) FOR UPDATE OF locked SKIP LOCKED) AS still_old "
        "WHERE webhook_subscriptions.conversation_id = ANY ($1::UUID[]) AND "
        "webhook_subscriptions.conversation_id = still_old.conversation_id AND "
        "webhook_subscriptions.subscription_id = still_old.subscription_id"
    ),
}

ID = uuid.UUID("00000000-0000-0000-0000-000000000001")


def rendered(session: AsyncSession, statement: Executable) -> str:
    return str(statement.compile(dialect=session.bind.dialect))


def pinned_part(sql: str) -> str:
    """What follows FROM for a SELECT; everything before RETURNING for DML."""
    return sql.split("\nFROM ", 1)[1] if sql.startswith("SELECT") else sql.split(" RETURNING ", 1)[0]


def test_every_prebuilt_statement_is_pinned() -> None:
    assert sorted(PREBUILT) == sorted(PINNED)


RETURNING_MODELS = sorted(
    name for name, statement in PREBUILT.items() if statement._propagate_attrs.get("compile_state_plugin") == "orm"
)


def test_only_counts_deletes_single_column_reads_the_tick_and_maintenance_return_no_models() -> None:
    # Everything else returns rows of a model, and must load them as stored (next test). The tick's
    # statements run on the driver as plain rows; claim_due refreshes held schedules itself.
    assert sorted(set(PREBUILT) - set(RETURNING_MODELS)) == [
        "fires.count_in_window",
        "fires.count_orphans",
        "fires.count_prunable",
        "fires.delete",
        "fires.delete_orphans",
        "fires.prune",
        "fires.purge_conversation",
        "schedules.citus_installed",  # the catalog questions of the first claim on a connection
        "schedules.claim_fires",  # returns (schedule_id, fire_id) only: claims are plain records
        "schedules.claim_reschedule",  # returns the key and the columns it changes
        "schedules.claim_scan_sharded",  # Citus: keys and shards of due schedules, no rows to load
        "schedules.claim_scan_sharded_after",
        "schedules.count_active_for_conversation",
        "schedules.count_orphans",
        "schedules.delete",
        "schedules.delete_orphans",
        "schedules.hash_distributed",
        "schedules.purge_conversation",
        "schedules.source_exists",
        "schedules.unlink_orphans",
        # The maintenance jobs' batches and pages work in sessions of their own: no held objects to load.
        "subscriptions.count",
        "subscriptions.count_orphans",
        "subscriptions.delete",
        "subscriptions.delete_orphans",
        "subscriptions.first_secrets",
        "subscriptions.purge_conversation",
        "subscriptions.reencrypt_secrets",
        "subscriptions.secret_ciphertext",
        "subscriptions.secrets_after",
    ]


@pytest.mark.parametrize("name", RETURNING_MODELS)
def test_a_statement_that_loads_models_overwrites_held_objects(name: str) -> None:
    assert PREBUILT[name].get_execution_options().get("populate_existing") is True


@pytest.mark.parametrize("name", sorted(PINNED))
def test_prebuilt_statement_renders_its_pinned_sql(wake_session: AsyncSession, name: str) -> None:
    assert pinned_part(rendered(wake_session, PREBUILT[name])) == PINNED[name]


TICK_STATEMENTS = [
    "schedules.citus_installed",
    "schedules.hash_distributed",
    "schedules.claim_lock",
    "schedules.claim_lock_excluding",
    "schedules.claim_scan_sharded",
    "schedules.claim_scan_sharded_after",
    "schedules.claim_lock_among",
    "schedules.claim_fires",
    "schedules.claim_reschedule",
]


@pytest.mark.parametrize("name", TICK_STATEMENTS)
def test_the_tick_sends_on_the_driver_exactly_what_sqlalchemy_would(wake_session: AsyncSession, name: str) -> None:
    driver = for_driver(name)
    assert driver.sql == rendered(wake_session, PREBUILT[name])
    assert dict(driver.execution_options) == dict(PREBUILT[name].get_execution_options())


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda session, secrets: WakeScheduleRepository(session).get(ID, ID), "schedules.get"),
        (
            lambda session, secrets: WakeScheduleRepository(session).list_for_conversation(ID, limit=50),
            "schedules.list_for_conversation",
        ),
        (lambda session, secrets: WakeScheduleRepository(session).list_due(NOW), "schedules.list_due"),
        (lambda session, secrets: WakeFireRepository(session).count_in_window(ID, NOW), "fires.count_in_window"),
        (
            lambda session, secrets: WakeFireRepository(session).list_for_conversation(ID),
            "fires.list_for_conversation",
        ),
        (
            lambda session, secrets: WebhookSubscriptionRepository(session, secrets).find_by_id(ID),
            "subscriptions.find_by_id",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
async def test_a_hot_call_sends_its_prebuilt_statement(
    wake_session: AsyncSession, wake_secrets: Any, call: Any, name: str
) -> None:
    await wake_session.execute(text("SELECT 1"))  # the fixture's savepoint, sent before the call
    with capture_sql(wake_session) as captured:
        await call(wake_session, wake_secrets)
    assert [statement.sql for statement in captured] == [rendered(wake_session, PREBUILT[name])]


# The statements whose index is partial: a bound $n in place of the index's
# constant would leave the generic plan unable to use it.
PARTIAL_INDEX_PLANS = {
    "schedules.claim_lock": ("idx_wake_schedules_next_fire", [NOW, 200]),
    "schedules.list_due": ("idx_wake_schedules_next_fire", [NOW, 200]),
    "fires.list_stale_dispatching": ("idx_wake_fires_dispatching", [NOW, 200]),
}


@pytest.mark.parametrize("name", sorted(PARTIAL_INDEX_PLANS))
async def test_the_generic_plan_uses_the_partial_index(wake_session: AsyncSession, name: str) -> None:
    index, values = PARTIAL_INDEX_PLANS[name]
    sql = rendered(wake_session, PREBUILT[name])
    await wake_session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
    # On the test's near-empty tables a scan would win on cost; without it, the plan shows which index it can use.
    await wake_session.execute(text("SET LOCAL enable_seqscan = off"))
    connection = await wake_session.connection()
    with spans_partitions("test: plan of a cross-partition statement"):
        await connection.exec_driver_sql(f"PREPARE plan_check AS {sql}")
        try:
            arguments = ", ".join(
                f"'{value.isoformat()}'" if hasattr(value, "isoformat") else str(value) for value in values
            )
            plan = (await connection.exec_driver_sql(f"EXPLAIN EXECUTE plan_check({arguments})")).scalars().all()
        finally:
            await connection.exec_driver_sql("DEALLOCATE plan_check")
    assert any(index in line for line in plan), "\n".join(plan)
