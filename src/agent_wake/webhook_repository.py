"""Partition-scoped access to ``webhook_subscriptions``, with secrets
encrypted by a :class:`~agent_wake.secret_box.SecretBox`."""

import uuid
from datetime import datetime
from typing import Final

import uuid_utils.compat as uuid_utils
from sqlalchemy.ext.asyncio import AsyncSession

from agent_wake import _validation as check
from agent_wake import enums
from agent_wake._repository import PartitionedRepository
from agent_wake.errors import AmbiguousIdError, InvalidInputError
from agent_wake.models import WebhookSubscription
from agent_wake.secret_box import SecretBox

__all__ = ["WebhookSubscriptionRepository"]

_MAX_SECRET_LENGTH: Final = 4096
_MAX_TEXT_LENGTH: Final = 100_000
_MAX_RATE_LIMIT: Final = 1_000_000


def _require_secret(field: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(field, "must be a non-empty string")
    if len(value) > _MAX_SECRET_LENGTH:
        raise InvalidInputError(field, f"must be at most {_MAX_SECRET_LENGTH} characters")
    check.require_utf8(field, value)
    return value


class WebhookSubscriptionRepository(PartitionedRepository[WebhookSubscription]):
    """Reads and writes the webhook subscriptions of one conversation at a time.

    Secrets are stored only as Fernet ciphertext made by ``secrets``; the
    plaintext leaves only through :meth:`reveal_secret` and
    :meth:`rotate_secret`. Every method but :meth:`find_by_id` takes
    ``conversation_id`` first and puts it in the WHERE clause. Methods flush
    but never commit; every subscription returned is the row as stored, and
    an object of it that the session held is refreshed.
    ``get(conversation_id, subscription_id)``, ``list_for_conversation(conversation_id,
    limit=200)`` (newest first) and ``delete(conversation_id, subscription_id)``
    (its fires stay, with no source: the DELETE's statement clears their
    ``webhook_subscription_id`` first, on either layout) come from the shared base.
    """

    model = WebhookSubscription
    id_column = "subscription_id"
    entity = "webhook subscription"
    statement_prefix = "subscriptions"

    def __init__(self, session: AsyncSession, secrets: SecretBox) -> None:
        if not isinstance(secrets, SecretBox):
            raise InvalidInputError("secrets", "must be a SecretBox")
        super().__init__(session)
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
        key = self._key_parameters(conversation_id, uuid_utils.uuid7() if subscription_id is None else subscription_id)
        return await self._insert(
            {
                **key,
                "user_id": check.require_uuid("user_id", user_id),
                "agent_id": check.require_uuid("agent_id", agent_id),
                "default_skill_id": check.optional_uuid("default_skill_id", default_skill_id),
                "name": check.optional_text("name", name, max_length=500),
                "secret_ciphertext": self._secrets.encrypt(_require_secret("secret", secret)),
                "allowed_source_pattern": check.optional_text(
                    "allowed_source_pattern", allowed_source_pattern, max_length=_MAX_TEXT_LENGTH
                ),
                "execution_mode": check.require_choice("execution_mode", execution_mode, enums.EXECUTION_MODES),
                "task_prompt_template": check.optional_text(
                    "task_prompt_template", task_prompt_template, max_length=_MAX_TEXT_LENGTH
                ),
                "verification_scheme": check.require_slug("verification_scheme", verification_scheme),
                "status": check.require_choice("status", status, enums.SUBSCRIPTION_STATUSES),
                "rate_limit_per_minute": check.optional_int(
                    "rate_limit_per_minute", rate_limit_per_minute, minimum=1, maximum=_MAX_RATE_LIMIT
                ),
            }
        )

    async def reveal_secret(self, conversation_id: uuid.UUID, subscription_id: uuid.UUID) -> str:
        """The plaintext secret, for HMAC verification. One SELECT."""
        key = self._key_parameters(conversation_id, subscription_id)
        ciphertext = await self._scalar(self._prebuilt("secret_ciphertext"), key)
        if ciphertext is None:
            raise self._not_found(key)
        return self._secrets.decrypt(ciphertext)

    async def rotate_secret(
        self, conversation_id: uuid.UUID, subscription_id: uuid.UUID, new_secret: str | None = None
    ) -> str:
        """Replace the secret and return the new plaintext, once.

        Without ``new_secret`` a strong one (256 random bits) is generated. One UPDATE.
        """
        key = self._key_parameters(conversation_id, subscription_id)
        secret = SecretBox.generate_secret() if new_secret is None else _require_secret("new_secret", new_secret)
        values = {"secret_ciphertext": self._secrets.encrypt(secret)}
        await self._update_one(key, self._prebuilt("set_secret"), values, action="rotate the secret of")
        return secret

    async def pause(self, conversation_id: uuid.UUID, subscription_id: uuid.UUID) -> WebhookSubscription:
        """Stop accepting fires; a paused subscription stays paused (the row is still written). One UPDATE."""
        key = self._key_parameters(conversation_id, subscription_id)
        return await self._update_one(key, self._prebuilt("set_status"), {"status": "paused"}, action="pause")

    async def resume(self, conversation_id: uuid.UUID, subscription_id: uuid.UUID) -> WebhookSubscription:
        """Accept fires again; an active subscription stays active (the row is still written). One UPDATE."""
        key = self._key_parameters(conversation_id, subscription_id)
        return await self._update_one(key, self._prebuilt("set_status"), {"status": "active"}, action="resume")

    async def record_fire(
        self, conversation_id: uuid.UUID, subscription_id: uuid.UUID, *, fired_at: datetime
    ) -> WebhookSubscription:
        """Stamp ``last_fired_at`` of an active subscription; refuses a paused one
        (:class:`~agent_wake.errors.StatusConflictError`). One UPDATE."""
        key = self._key_parameters(conversation_id, subscription_id)
        values = {"last_fired_at": check.require_aware("fired_at", fired_at)}
        return await self._update_one(key, self._prebuilt("record_fire_if_active"), values, action="record a fire of")

    async def find_by_id(self, subscription_id: uuid.UUID) -> WebhookSubscription | None:
        """Cross-partition: the subscription with this id in any conversation, or ``None``.

        For a webhook receiver that has only the id from a URL; it must
        then verify the request's signature with :meth:`reveal_secret`
        before trusting anything else. On the re-keyed layout
        (:mod:`agent_wake.distribution`) ids are unique per conversation
        only: an id two conversations hold is refused with
        :class:`~agent_wake.errors.AmbiguousIdError` rather than one of them
        picked (both rows are loaded, as stored). Served by the unique index
        on ``subscription_id`` (on the re-keyed layout, by
        ``idx_webhook_subs_subscription``; on Citus, it asks every shard).
        One SELECT, of two rows at most.
        """
        self._refuse_on_declaring_session("find_by_id")
        parameters = {"subscription_id": check.require_uuid("subscription_id", subscription_id)}
        found: list[WebhookSubscription] = await self._all(self._prebuilt("find_by_id"), parameters)
        if len(found) > 1:
            raise AmbiguousIdError(
                entity=self.entity,
                entity_id=parameters["subscription_id"],
                conversation_ids=tuple(subscription.conversation_id for subscription in found),
            )
        return found[0] if found else None
