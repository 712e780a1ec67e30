"""The SQL each hot repository call sends, shown and pinned.

The column lists are left out (they follow the models); what follows FROM is
written here by hand, reviewed for the partition pin and the index each
query is meant to use, so that a change to any of them shows up in review.
"""

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from agent_wake import AgentWakeError, WakeFireRepository, WakeScheduleRepository, WebhookSubscriptionRepository
from agent_wake.factories import WakeFactory
from tests.clock import NOW

ID = uuid.UUID("00000000-0000-0000-0000-000000000001")

HOT_QUERIES: dict[str, tuple[Callable[[AsyncSession, Any], Awaitable[object]], str]] = {
    "schedule get (primary key)": (
        lambda session, _: WakeScheduleRepository(session).get(ID, ID),
        "agent_wake_schedules \nWHERE agent_wake_schedules.conversation_id = $1::UUID "
        "AND agent_wake_schedules.schedule_id = $2::UUID",
    ),
    "schedules of a conversation (idx_wake_schedules_conv_status)": (
        lambda session, _: WakeScheduleRepository(session).list_for_conversation(ID, limit=50),
        "agent_wake_schedules \nWHERE agent_wake_schedules.conversation_id = $1::UUID "
        "ORDER BY agent_wake_schedules.date_created DESC, agent_wake_schedules.schedule_id DESC \n LIMIT $2::INTEGER",
    ),
    "due schedules (idx_wake_schedules_next_fire)": (
        lambda session, _: WakeScheduleRepository(session).list_due(NOW, limit=200),
        "agent_wake_schedules \nWHERE agent_wake_schedules.status = $1::VARCHAR "
        "AND agent_wake_schedules.next_fire_at <= $2::TIMESTAMP WITH TIME ZONE "
        "ORDER BY agent_wake_schedules.next_fire_at, agent_wake_schedules.schedule_id \n LIMIT $3::INTEGER",
    ),
    "fires of a conversation (idx_wake_fires_conv_time)": (
        lambda session, _: WakeFireRepository(session).list_for_conversation(ID, limit=50),
        "wake_fires \nWHERE wake_fires.conversation_id = $1::UUID "
        "ORDER BY wake_fires.actual_fired_at DESC, wake_fires.fire_id DESC \n LIMIT $2::INTEGER",
    ),
    "fires in a window (idx_wake_fires_conv_time)": (
        lambda session, _: WakeFireRepository(session).count_in_window(ID, NOW),
        "wake_fires \nWHERE wake_fires.conversation_id = $1::UUID "
        "AND wake_fires.actual_fired_at >= $2::TIMESTAMP WITH TIME ZONE",
    ),
    "webhook receiver lookup (webhook_subscriptions_subscription_id_key)": (
        lambda session, secrets: WebhookSubscriptionRepository(session, secrets).find_by_id(ID),
        "webhook_subscriptions \nWHERE webhook_subscriptions.subscription_id = $1::UUID",
    ),
}


def after_from(sql: str) -> str:
    return sql.split("\nFROM ", 1)[1]


@pytest.mark.parametrize(("call", "expected"), HOT_QUERIES.values(), ids=HOT_QUERIES.keys())
async def test_hot_read_sends_this_sql(wake_session: AsyncSession, wake_secrets: Any, call: Any, expected: str) -> None:
    connection = await wake_session.connection()
    sent: list[str] = []
    event.listen(connection.sync_connection, "before_cursor_execute", lambda *args: sent.append(args[2]))
    await call(wake_session, wake_secrets)
    assert len(sent) == 1
    assert after_from(sent[0]) == expected


async def test_create_dispatching_and_finalize_send_one_statement_each(
    wake_factory: WakeFactory, wake_session: AsyncSession
) -> None:
    schedule = await wake_factory.schedule()
    connection = await wake_session.connection()
    sent: list[str] = []
    event.listen(connection.sync_connection, "before_cursor_execute", lambda *args: sent.append(args[2]))
    fires = WakeFireRepository(wake_session)
    fire = await fires.create_dispatching(
        conversation_id=schedule.conversation_id, schedule_id=schedule.schedule_id, scheduled_fire_at=NOW
    )
    await fires.finalize_success(fire.conversation_id, fire.fire_id, status="fired", output_text="ok")
    creating, finalizing = sent
    assert creating.startswith(
        "INSERT INTO wake_fires (schedule_id, webhook_subscription_id, conversation_id, fire_id, scheduled_fire_at, "
        "actual_fired_at, status) SELECT agent_wake_schedules.schedule_id, NULL AS anon_1, $1::UUID AS anon_2, "
        "$2::UUID AS anon_3, $3::TIMESTAMP WITH TIME ZONE AS anon_4, "
        "coalesce($4::TIMESTAMP WITH TIME ZONE, now()) AS coalesce_1, $5::VARCHAR AS anon_5 \n"
        "FROM agent_wake_schedules \n"
        "WHERE agent_wake_schedules.conversation_id = $1::UUID AND agent_wake_schedules.schedule_id = $6::UUID "
        "RETURNING "
    )
    assert finalizing.startswith(
        "UPDATE wake_fires SET status=$1::VARCHAR, display_suppressed=$2::BOOLEAN, output_text=$3::VARCHAR, "
        "latency_ms=$4::INTEGER WHERE wake_fires.conversation_id = $5::UUID AND wake_fires.fire_id = $6::UUID "
        "AND wake_fires.status = $7::VARCHAR RETURNING "
    )
    with pytest.raises(AgentWakeError):
        await fires.finalize_success(uuid.uuid4(), fire.fire_id, status="fired")
