"""WebhookSubscriptionRepository against the migrated database."""

import logging
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from agent_wake import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    SecretBox,
    SecretDecryptionError,
    WebhookSubscription,
    WebhookSubscriptionRepository,
)
from agent_wake.testing.factories import WakeFactory
from tests.clock import NOW

SECRET = "whsec_test_secret_value"


@pytest.fixture
def repo(wake_session: AsyncSession, wake_secrets: SecretBox) -> WebhookSubscriptionRepository:
    return WebhookSubscriptionRepository(wake_session, wake_secrets)


async def stored_ciphertext(wake_session: AsyncSession, subscription: WebhookSubscription) -> bytes:
    result = await wake_session.execute(
        text("SELECT secret_ciphertext FROM webhook_subscriptions WHERE conversation_id = :c AND subscription_id = :s"),
        {"c": subscription.conversation_id, "s": subscription.subscription_id},
    )
    return bytes(result.scalar_one())


async def test_create_stores_only_ciphertext(
    wake_factory: WakeFactory,
    repo: WebhookSubscriptionRepository,
    wake_session: AsyncSession,
    wake_secrets: SecretBox,
) -> None:
    created = await wake_factory.subscription(conversation_id=uuid.uuid4(), secret=SECRET)
    ciphertext = await stored_ciphertext(wake_session, created)
    assert SECRET.encode() not in ciphertext
    assert wake_secrets.decrypt(ciphertext) == SECRET
    assert created.verification_scheme == "generic_hmac_sha256"
    assert created.status == "active"
    assert created.subscription_id.version == 7


async def test_secret_never_appears_in_repr_or_logs(
    wake_factory: WakeFactory,
    wake_session: AsyncSession,
    wake_secrets: SecretBox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await wake_factory.subscription(conversation_id=uuid.uuid4(), secret=SECRET)
    assert SECRET not in repr(created)
    assert "secret_ciphertext" not in repr(created)
    assert SECRET not in caplog.text


async def test_a_secret_that_cannot_be_encoded_is_refused_without_echoing_it(
    wake_factory: WakeFactory, wake_session: AsyncSession, wake_secrets: SecretBox
) -> None:
    secret = "hunter2-TOPSECRET\ud800"
    with pytest.raises(InvalidInputError) as caught:
        await wake_factory.subscription(conversation_id=uuid.uuid4(), secret=secret)
    assert caught.value.field == "secret"
    assert "TOPSECRET" not in repr(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or "TOPSECRET" not in repr(caught.value.__context__)
    created = await wake_factory.subscription(conversation_id=uuid.uuid4())
    repo = WebhookSubscriptionRepository(wake_session, wake_secrets)
    with pytest.raises(InvalidInputError) as caught:
        await repo.rotate_secret(created.conversation_id, created.subscription_id, new_secret=secret)
    assert "TOPSECRET" not in repr(caught.value)


async def test_create_refuses_a_scheme_that_is_not_a_slug(
    wake_factory: WakeFactory, wake_session: AsyncSession, wake_secrets: SecretBox
) -> None:
    conversation_id = uuid.uuid4()
    with pytest.raises(InvalidInputError) as caught:
        await wake_factory.subscription(conversation_id=conversation_id, verification_scheme="GitHub-v2")
    assert caught.value.field == "verification_scheme"
    count = await wake_session.execute(
        text("SELECT count(*) FROM webhook_subscriptions WHERE conversation_id = :c"), {"c": conversation_id}
    )
    assert count.scalar_one() == 0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"secret": ""}, "secret"),
        ({"secret": None}, "secret"),
        ({"status": "expired"}, "status"),
        ({"execution_mode": "batch"}, "execution_mode"),
        ({"rate_limit_per_minute": 0}, "rate_limit_per_minute"),
        ({"user_id": 42}, "user_id"),
    ],
)
async def test_create_refuses_bad_input(
    wake_factory: WakeFactory,
    wake_session: AsyncSession,
    wake_secrets: SecretBox,
    overrides: dict[str, object],
    field: str,
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await wake_factory.subscription(conversation_id=uuid.uuid4(), **overrides)
    assert caught.value.field == field


async def test_create_accepts_vendor_schemes(
    wake_factory: WakeFactory, wake_session: AsyncSession, wake_secrets: SecretBox
) -> None:
    created = await wake_factory.subscription(conversation_id=uuid.uuid4(), verification_scheme="slack_signing")
    assert created.verification_scheme == "slack_signing"


async def test_reveal_secret_is_partition_scoped(
    wake_factory: WakeFactory,
    repo: WebhookSubscriptionRepository,
    wake_session: AsyncSession,
    wake_secrets: SecretBox,
) -> None:
    created = await wake_factory.subscription(conversation_id=uuid.uuid4(), secret=SECRET)
    assert await repo.reveal_secret(created.conversation_id, created.subscription_id) == SECRET
    with pytest.raises(NotFoundError) as caught:
        await repo.reveal_secret(uuid.uuid4(), created.subscription_id)
    assert SECRET not in str(caught.value)


async def test_rotate_secret_generates_a_strong_secret_and_returns_it_once(
    wake_factory: WakeFactory,
    repo: WebhookSubscriptionRepository,
    wake_session: AsyncSession,
    wake_secrets: SecretBox,
) -> None:
    created = await wake_factory.subscription(conversation_id=uuid.uuid4(), secret=SECRET)
    rotated = await repo.rotate_secret(created.conversation_id, created.subscription_id)
    assert rotated != SECRET
    assert len(rotated) >= 43
    assert await repo.reveal_secret(created.conversation_id, created.subscription_id) == rotated
    chosen = await repo.rotate_secret(created.conversation_id, created.subscription_id, new_secret="chosen-one")
    assert chosen == "chosen-one"
    assert await repo.reveal_secret(created.conversation_id, created.subscription_id) == "chosen-one"


async def test_rotate_secret_of_another_conversation_changes_nothing(
    wake_factory: WakeFactory,
    repo: WebhookSubscriptionRepository,
    wake_session: AsyncSession,
    wake_secrets: SecretBox,
) -> None:
    created = await wake_factory.subscription(conversation_id=uuid.uuid4(), secret=SECRET)
    with pytest.raises(NotFoundError):
        await repo.rotate_secret(uuid.uuid4(), created.subscription_id)
    assert await repo.reveal_secret(created.conversation_id, created.subscription_id) == SECRET


async def test_secret_encrypted_under_an_old_key_still_decrypts_after_key_rotation(
    wake_session: AsyncSession,
) -> None:
    old_key, new_key = SecretBox.generate_key(), SecretBox.generate_key()
    created = await WakeFactory(wake_session, SecretBox.from_keys(old_key)).subscription(
        conversation_id=uuid.uuid4(), secret=SECRET
    )
    rotated_box = WebhookSubscriptionRepository(wake_session, SecretBox.from_keys(new_key, old_key))
    assert await rotated_box.reveal_secret(created.conversation_id, created.subscription_id) == SECRET
    stranger = WebhookSubscriptionRepository(wake_session, SecretBox.from_keys(new_key))
    with pytest.raises(SecretDecryptionError) as caught:
        await stranger.reveal_secret(created.conversation_id, created.subscription_id)
    assert SECRET not in str(caught.value)


async def test_pause_and_resume(
    wake_factory: WakeFactory,
    repo: WebhookSubscriptionRepository,
    wake_session: AsyncSession,
    wake_secrets: SecretBox,
) -> None:
    created = await wake_factory.subscription(conversation_id=uuid.uuid4())
    assert (await repo.pause(created.conversation_id, created.subscription_id)).status == "paused"
    assert (await repo.pause(created.conversation_id, created.subscription_id)).status == "paused"
    assert (await repo.resume(created.conversation_id, created.subscription_id)).status == "active"


async def test_record_fire_stamps_last_fired_at_and_refuses_a_paused_subscription(
    wake_factory: WakeFactory,
    repo: WebhookSubscriptionRepository,
    wake_session: AsyncSession,
    wake_secrets: SecretBox,
) -> None:
    created = await wake_factory.subscription(conversation_id=uuid.uuid4())
    fired = await repo.record_fire(created.conversation_id, created.subscription_id, fired_at=NOW)
    assert fired.last_fired_at == NOW
    await repo.pause(created.conversation_id, created.subscription_id)
    with pytest.raises(ConflictError, match="paused"):
        await repo.record_fire(created.conversation_id, created.subscription_id, fired_at=NOW)


async def test_list_for_conversation_and_delete(
    wake_factory: WakeFactory,
    repo: WebhookSubscriptionRepository,
    wake_session: AsyncSession,
    wake_secrets: SecretBox,
) -> None:
    conversation_id = uuid.uuid4()
    first = await wake_factory.subscription(conversation_id=conversation_id)
    await wake_session.execute(
        text(
            "UPDATE webhook_subscriptions SET date_created = now() - interval '1 hour' "
            "WHERE conversation_id = :c AND subscription_id = :s"
        ),
        {"c": conversation_id, "s": first.subscription_id},
    )
    second = await wake_factory.subscription(conversation_id=conversation_id)
    listed = await repo.list_for_conversation(conversation_id)
    assert [s.subscription_id for s in listed] == [second.subscription_id, first.subscription_id]
    await repo.delete(conversation_id, first.subscription_id)
    assert [s.subscription_id for s in await repo.list_for_conversation(conversation_id)] == [second.subscription_id]
    with pytest.raises(NotFoundError):
        await repo.delete(conversation_id, first.subscription_id)


async def test_find_by_id_looks_across_conversations(
    wake_factory: WakeFactory,
    repo: WebhookSubscriptionRepository,
    wake_session: AsyncSession,
    wake_secrets: SecretBox,
) -> None:
    created = await wake_factory.subscription(conversation_id=uuid.uuid4())
    found = await repo.find_by_id(created.subscription_id)
    assert found is not None
    assert found.conversation_id == created.conversation_id
    assert await repo.find_by_id(uuid.uuid4()) is None


def test_repository_refuses_something_that_is_not_a_secret_box(wake_session: AsyncSession) -> None:
    with pytest.raises(InvalidInputError) as caught:
        WebhookSubscriptionRepository(wake_session, "not a box")  # type: ignore[arg-type]
    assert caught.value.field == "secrets"
