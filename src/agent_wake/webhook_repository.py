"""Partition-scoped access to ``webhook_subscriptions``, with secrets
encrypted by a :class:`~agent_wake.secret_box.SecretBox`."""

import uuid
from datetime import datetime
from typing import Any, Final

import uuid_utils.compat as uuid_utils
from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from agent_wake import _validation as check
from agent_wake import enums
from agent_wake.errors import ConflictError, InvalidInputError, NotFoundError, translate_database_errors
from agent_wake.models import WebhookSubscription
from agent_wake.partition_guard import spans_partitions
from agent_wake.secret_box import SecretBox

__all__ = ["WebhookSubscriptionRepository"]

_MAX_SECRET_LENGTH: Final = 4096
_MAX_TEXT_LENGTH: Final = 100_000
_MAX_RATE_LIMIT: Final = 1_000_000


def _this_subscription(conversation_id: uuid.UUID, subscription_id: uuid.UUID) -> ColumnElement[bool]:
    return (WebhookSubscription.conversation_id == conversation_id) & (
        WebhookSubscription.subscription_id == subscription_id
    )


def _require_secret(field: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(field, "must be a non-empty string")
    if len(value) > _MAX_SECRET_LENGTH:
        raise InvalidInputError(field, f"must be at most {_MAX_SECRET_LENGTH} characters")
    check.require_utf8(field, value)
    return value


class WebhookSubscriptionRepository:
    """Reads and writes the webhook subscriptions of one conversation at a time.

    Secrets are stored only as Fernet ciphertext made by ``secrets``; the
    plaintext leaves only through :meth:`reveal_secret` and
    :meth:`rotate_secret`. Every method but :meth:`find_by_id` takes
    ``conversation_id`` first and puts it in the WHERE clause. Methods flush
    but never commit.
    """

    def __init__(self, session: AsyncSession, secrets: SecretBox) -> None:
        if not isinstance(secrets, SecretBox):
            raise InvalidInputError("secrets", "must be a SecretBox")
        self._session = session
        self._secrets = secrets

    async def create(
        self,
        *,
        conversation_id: uuid.UUID,
        user_id: uuid.UUID,
        agent_id: uuid.UUID,
        secret: str,
        name: str | None = None,
        default_skill_id: uuid.UUID | None = None,
        allowed_source_pattern: str | None = None,
        execution_mode: enums.ExecutionMode = "inline",
        task_prompt_template: str | None = None,
        verification_scheme: str = "generic_hmac_sha256",
        status: enums.SubscriptionStatus = "active",
        rate_limit_per_minute: int | None = None,
        subscription_id: uuid.UUID | None = None,
    ) -> WebhookSubscription:
        """Insert a subscription, its ``secret`` encrypted, and return it. One INSERT."""
        subscription = WebhookSubscription(
            conversation_id=check.require_uuid("conversation_id", conversation_id),
            subscription_id=(
                uuid_utils.uuid7()
                if subscription_id is None
                else check.require_uuid("subscription_id", subscription_id)
            ),
            user_id=check.require_uuid("user_id", user_id),
            agent_id=check.require_uuid("agent_id", agent_id),
            default_skill_id=check.optional_uuid("default_skill_id", default_skill_id),
            name=check.optional_text("name", name, max_length=500),
            secret_ciphertext=self._secrets.encrypt(_require_secret("secret", secret)),
            allowed_source_pattern=check.optional_text(
                "allowed_source_pattern", allowed_source_pattern, max_length=_MAX_TEXT_LENGTH
            ),
            execution_mode=check.require_choice("execution_mode", execution_mode, enums.EXECUTION_MODES),
            task_prompt_template=check.optional_text(
                "task_prompt_template", task_prompt_template, max_length=_MAX_TEXT_LENGTH
            ),
            verification_scheme=check.require_slug("verification_scheme", verification_scheme),
            status=check.require_choice("status", status, enums.SUBSCRIPTION_STATUSES),
            rate_limit_per_minute=check.optional_int(
                "rate_limit_per_minute", rate_limit_per_minute, minimum=1, maximum=_MAX_RATE_LIMIT
            ),
        )
        self._session.add(subscription)
        with translate_database_errors():
            await self._session.flush()
        return subscription

    async def get(self, conversation_id: uuid.UUID, subscription_id: uuid.UUID) -> WebhookSubscription | None:
        """The subscription, or ``None`` when this conversation has no such subscription."""
        statement = select(WebhookSubscription).where(
            _this_subscription(
                check.require_uuid("conversation_id", conversation_id),
                check.require_uuid("subscription_id", subscription_id),
            )
        )
        return (await self._session.scalars(statement)).one_or_none()

    async def list_for_conversation(self, conversation_id: uuid.UUID, *, limit: int = 200) -> list[WebhookSubscription]:
        """The conversation's subscriptions, newest first."""
        statement = (
            select(WebhookSubscription)
            .where(WebhookSubscription.conversation_id == check.require_uuid("conversation_id", conversation_id))
            .order_by(WebhookSubscription.date_created.desc(), WebhookSubscription.subscription_id.desc())
            .limit(check.require_limit(limit))
        )
        return list(await self._session.scalars(statement))

    async def reveal_secret(self, conversation_id: uuid.UUID, subscription_id: uuid.UUID) -> str:
        """The plaintext secret, for HMAC verification. One SELECT."""
        conversation_id = check.require_uuid("conversation_id", conversation_id)
        subscription_id = check.require_uuid("subscription_id", subscription_id)
        statement = select(WebhookSubscription.secret_ciphertext).where(
            _this_subscription(conversation_id, subscription_id)
        )
        ciphertext = (await self._session.execute(statement)).scalar_one_or_none()
        if ciphertext is None:
            raise self._not_found(conversation_id, subscription_id)
        return self._secrets.decrypt(ciphertext)

    async def rotate_secret(
        self, conversation_id: uuid.UUID, subscription_id: uuid.UUID, new_secret: str | None = None
    ) -> str:
        """Replace the secret and return the new plaintext, once.

        Without ``new_secret`` a strong one (256 random bits) is generated.
        """
        secret = SecretBox.generate_secret() if new_secret is None else _require_secret("new_secret", new_secret)
        await self._update_one(
            conversation_id,
            subscription_id,
            {"secret_ciphertext": self._secrets.encrypt(secret)},
            only_if_status=None,
        )
        return secret

    async def pause(self, conversation_id: uuid.UUID, subscription_id: uuid.UUID) -> WebhookSubscription:
        """Stop accepting fires; pausing a paused subscription changes nothing."""
        return await self._update_one(conversation_id, subscription_id, {"status": "paused"}, only_if_status=None)

    async def resume(self, conversation_id: uuid.UUID, subscription_id: uuid.UUID) -> WebhookSubscription:
        """Accept fires again; resuming an active subscription changes nothing."""
        return await self._update_one(conversation_id, subscription_id, {"status": "active"}, only_if_status=None)

    async def record_fire(
        self, conversation_id: uuid.UUID, subscription_id: uuid.UUID, *, fired_at: datetime
    ) -> WebhookSubscription:
        """Stamp ``last_fired_at`` of an active subscription; refuses a paused one."""
        return await self._update_one(
            conversation_id,
            subscription_id,
            {"last_fired_at": check.require_aware("fired_at", fired_at)},
            only_if_status="active",
        )

    async def delete(self, conversation_id: uuid.UUID, subscription_id: uuid.UUID) -> None:
        """Delete the subscription; its fires stay, with no source (ON DELETE SET NULL)."""
        conversation_id = check.require_uuid("conversation_id", conversation_id)
        subscription_id = check.require_uuid("subscription_id", subscription_id)
        statement = (
            delete(WebhookSubscription)
            .where(_this_subscription(conversation_id, subscription_id))
            .returning(WebhookSubscription.subscription_id)
        )
        with translate_database_errors():
            deleted = (await self._session.execute(statement)).scalar_one_or_none()
        if deleted is None:
            raise self._not_found(conversation_id, subscription_id)

    async def find_by_id(self, subscription_id: uuid.UUID) -> WebhookSubscription | None:
        """Cross-partition: the subscription with this id in any conversation, or ``None``.

        For a webhook receiver that has only the id from a URL; it must
        then verify the request's signature with :meth:`reveal_secret`
        before trusting anything else. Served by the unique index on
        ``subscription_id``.
        """
        statement = (
            select(WebhookSubscription)
            .where(WebhookSubscription.subscription_id == check.require_uuid("subscription_id", subscription_id))
            .execution_options(**spans_partitions("webhook receiver: look up a subscription by id"))
        )
        return (await self._session.scalars(statement)).one_or_none()

    @staticmethod
    def _not_found(conversation_id: uuid.UUID, subscription_id: uuid.UUID) -> NotFoundError:
        return NotFoundError(f"webhook subscription {subscription_id} not found in conversation {conversation_id}")

    async def _update_one(
        self,
        conversation_id: Any,
        subscription_id: Any,
        values: dict[str, Any],
        *,
        only_if_status: enums.SubscriptionStatus | None,
    ) -> WebhookSubscription:
        conversation_id = check.require_uuid("conversation_id", conversation_id)
        subscription_id = check.require_uuid("subscription_id", subscription_id)
        statement = update(WebhookSubscription).where(_this_subscription(conversation_id, subscription_id))
        if only_if_status is not None:
            statement = statement.where(WebhookSubscription.status == only_if_status)
        with translate_database_errors():
            updated = (
                await self._session.scalars(statement.values(**values).returning(WebhookSubscription))
            ).one_or_none()
        if updated is not None:
            return updated
        current = await self.get(conversation_id, subscription_id)
        if current is None:
            raise self._not_found(conversation_id, subscription_id)
        raise ConflictError(f"webhook subscription {subscription_id} is {current.status!r}")
