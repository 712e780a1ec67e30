"""Property: random sequences of repository calls over several conversations,
checked after every step against a simple in-memory model. No call made for
one conversation ever returns or changes a row of another."""

import uuid
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from agent_wake import (
    NotFoundError,
    SecretBox,
    WakeFire,
    WakeFireRepository,
    WakeSchedule,
    WakeScheduleRepository,
    WebhookSubscription,
    WebhookSubscriptionRepository,
)
from tests.clock import NOW, in_minutes

CONVERSATIONS = 3
conversation = st.integers(min_value=0, max_value=CONVERSATIONS - 1)
target = st.integers(min_value=0, max_value=50)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("create_schedule"), conversation),
        st.tuples(st.just("pause"), conversation, target),
        st.tuples(st.just("resume"), conversation, target),
        st.tuples(st.just("rename"), conversation, target, st.text(min_size=1, max_size=8).filter(str.isprintable)),
        st.tuples(st.just("delete_schedule"), conversation, target),
        st.tuples(st.just("get_schedule"), conversation, target),
        st.tuples(st.just("list_schedules"), conversation),
        st.tuples(st.just("fire"), conversation, target),
        st.tuples(st.just("finalize"), conversation, target),
        st.tuples(st.just("list_fires"), conversation),
        st.tuples(st.just("create_subscription"), conversation),
        st.tuples(st.just("rotate"), conversation, target),
        st.tuples(st.just("reveal"), conversation, target),
        st.tuples(st.just("delete_subscription"), conversation, target),
    ),
    max_size=30,
)


@dataclass
class Model:
    conversations: list[uuid.UUID]
    schedules: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    fires: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)

    @staticmethod
    def pick(rows: dict[uuid.UUID, dict[str, Any]], index: int) -> uuid.UUID | None:
        ids = sorted(rows)
        return ids[index % len(ids)] if ids else None


def owned_by(returned: Any, conversation_id: uuid.UUID) -> bool:
    items = returned if isinstance(returned, list) else [returned]
    return all(
        item.conversation_id == conversation_id
        for item in items
        if isinstance(item, WakeSchedule | WakeFire | WebhookSubscription)
    )


async def database_state(wake_session: AsyncSession, model: Model, secrets: SecretBox) -> Model:
    """What the database holds for the model's conversations, read with raw SQL."""
    state = Model(model.conversations)
    parameters = {"ids": model.conversations}
    for row in await wake_session.execute(
        text(
            "SELECT schedule_id, conversation_id, status, name FROM agent_wake_schedules "
            "WHERE conversation_id = ANY(:ids)"
        ),
        parameters,
    ):
        state.schedules[row.schedule_id] = {
            "conversation": row.conversation_id,
            "status": row.status,
            "name": row.name,
        }
    for row in await wake_session.execute(
        text("SELECT fire_id, conversation_id, status FROM wake_fires WHERE conversation_id = ANY(:ids)"),
        parameters,
    ):
        state.fires[row.fire_id] = {"conversation": row.conversation_id, "status": row.status}
    for row in await wake_session.execute(
        text(
            "SELECT subscription_id, conversation_id, secret_ciphertext FROM webhook_subscriptions "
            "WHERE conversation_id = ANY(:ids)"
        ),
        parameters,
    ):
        state.subscriptions[row.subscription_id] = {
            "conversation": row.conversation_id,
            "secret": secrets.decrypt(bytes(row.secret_ciphertext)),
        }
    return state


async def apply(operation: tuple[Any, ...], model: Model, wake_session: AsyncSession, secrets: SecretBox) -> None:
    name, conversation_index, *rest = operation
    conversation_id = model.conversations[conversation_index]
    schedules = WakeScheduleRepository(wake_session)
    fires = WakeFireRepository(wake_session)
    webhooks = WebhookSubscriptionRepository(wake_session, secrets)

    if name == "create_schedule":
        created = await schedules.create(
            conversation_id=conversation_id,
            user_id=uuid.uuid4(),
            agent_id=uuid.uuid4(),
            schedule_type="interval",
            schedule_config={"seconds": 60},
            next_fire_at=NOW,
        )
        model.schedules[created.schedule_id] = {
            "conversation": conversation_id,
            "status": "active",
            "name": None,
        }
        assert owned_by(created, conversation_id)
    elif name == "create_subscription":
        created_subscription = await webhooks.create(
            conversation_id=conversation_id, user_id=uuid.uuid4(), agent_id=uuid.uuid4(), secret="initial"
        )
        model.subscriptions[created_subscription.subscription_id] = {
            "conversation": conversation_id,
            "secret": "initial",
        }
    elif name == "list_schedules":
        assert owned_by(await schedules.list_for_conversation(conversation_id), conversation_id)
        assert owned_by(await schedules.list_active_for_conversation(conversation_id), conversation_id)
    elif name == "list_fires":
        assert owned_by(await fires.list_for_conversation(conversation_id), conversation_id)
    elif name in {"pause", "resume", "rename", "delete_schedule", "get_schedule", "fire"}:
        schedule_id = model.pick(model.schedules, rest[0])
        if schedule_id is None:
            return
        row = model.schedules[schedule_id]
        own = row["conversation"] == conversation_id
        if name == "get_schedule":
            found = await schedules.get(conversation_id, schedule_id)
            assert (found is not None) == own
            assert owned_by(found, conversation_id)
            return
        try:
            if name == "pause":
                result: Any = await schedules.pause(conversation_id, schedule_id)
                row["status"] = "paused"
            elif name == "resume":
                result = await schedules.resume(conversation_id, schedule_id, next_fire_at=in_minutes(5))
                row["status"] = "active"
            elif name == "rename":
                result = await schedules.update(conversation_id, schedule_id, name=rest[1])
                row["name"] = rest[1]
            elif name == "delete_schedule":
                result = await schedules.delete(conversation_id, schedule_id)
                del model.schedules[schedule_id]
                for fire_id in [f for f, fire in model.fires.items() if fire["schedule"] == schedule_id]:
                    del model.fires[fire_id]
            else:
                result = await fires.create_dispatching(conversation_id=conversation_id, schedule_id=schedule_id)
                model.fires[result.fire_id] = {
                    "conversation": conversation_id,
                    "status": "dispatching",
                    "schedule": schedule_id,
                }
        except NotFoundError:
            assert not own, f"{name} refused in its own conversation"
        else:
            assert own, f"{name} succeeded on another conversation's schedule"
            assert owned_by(result, conversation_id)
    elif name == "finalize":
        fire_id = model.pick(model.fires, rest[0])
        if fire_id is None:
            return
        own = model.fires[fire_id]["conversation"] == conversation_id
        try:
            finalized = await fires.finalize_success(conversation_id, fire_id, status="fired")
        except NotFoundError:
            assert not own
        else:
            assert own
            assert owned_by(finalized, conversation_id)
            model.fires[fire_id]["status"] = "fired"
    else:
        subscription_id = model.pick(model.subscriptions, rest[0])
        if subscription_id is None:
            return
        row = model.subscriptions[subscription_id]
        own = row["conversation"] == conversation_id
        try:
            if name == "rotate":
                row_secret = await webhooks.rotate_secret(conversation_id, subscription_id)
                row["secret"] = row_secret
            elif name == "reveal":
                assert await webhooks.reveal_secret(conversation_id, subscription_id) == row["secret"]
            else:
                await webhooks.delete(conversation_id, subscription_id)
                del model.subscriptions[subscription_id]
        except NotFoundError:
            assert not own
        else:
            assert own, f"{name} succeeded on another conversation's subscription"


def without_schedule_links(fires: dict[uuid.UUID, dict[str, Any]]) -> dict[uuid.UUID, dict[str, Any]]:
    return {fire_id: {k: v for k, v in fire.items() if k != "schedule"} for fire_id, fire in fires.items()}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=operations)
async def test_no_call_for_one_conversation_touches_another(
    wake_session: AsyncSession, wake_secrets: SecretBox, sequence: list[tuple[Any, ...]]
) -> None:
    model = Model([uuid.uuid4() for _ in range(CONVERSATIONS)])
    for operation in sequence:
        await apply(operation, model, wake_session, wake_secrets)
        state = await database_state(wake_session, model, wake_secrets)
        assert state.schedules == model.schedules, operation
        assert state.fires == without_schedule_links(model.fires), operation
        assert state.subscriptions == model.subscriptions, operation
