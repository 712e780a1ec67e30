"""Declarative models of the three wake tables, with every constraint and
index of the reference schema by name.

``Base.metadata`` holds these three tables and nothing else, so a host
application can hand it to Alembic beside its own metadata. The stand-in
upstream tables are in :mod:`agent_wake.standins`.

``conversation_id`` leads every wake table's primary key: the tables are
partitioned by it. There is no foreign key on it, because the
``conversations`` primary key is ``(agent_id, conversation_id)``.
"""

import uuid
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKeyConstraint,
    Index,
    LargeBinary,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    inspect,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_wake import enums
from agent_wake.standins import AgentSkill

__all__ = [
    "PARTITION_COLUMN",
    "WAKE_TABLES",
    "Base",
    "WakeFire",
    "WakeSchedule",
    "WebhookSubscription",
]

# Leads the primary key of every wake table: the tables are partitioned by it.
PARTITION_COLUMN: Final = "conversation_id"


def _one_of(column: str, values: tuple[str, ...], name: str) -> CheckConstraint:
    quoted = ", ".join(f"'{value}'" for value in values)
    return CheckConstraint(f"{column} IN ({quoted})", name=name, info={"columns": (column,)})


def _now_column() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


def _updated_column() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), onupdate=func.now())


# The stand-in's column object, not the string "agent_skills.skill_id": a
# string is resolved in Base.metadata, which holds no agent_skills. Either
# renders REFERENCES agent_skills (skill_id), in a host the host's table.
_SKILL_ID: Final = cast(Table, AgentSkill.__table__).c.skill_id


class Base(DeclarativeBase):
    """Declarative base of the three wake tables; ``Base.metadata`` holds only them."""

    type_annotation_map = {
        uuid.UUID: UUID(as_uuid=True),
        datetime: DateTime(timezone=True),
        str: Text(),
    }

    def __repr__(self) -> str:
        # Only the primary key: a repr must never show a column such as
        # secret_ciphertext, whatever a subclass adds later. Read from the
        # instance state, never through the attributes: an expired instance
        # would load itself, which is I/O (MissingGreenlet under asyncio, or
        # DetachedInstanceError once its session is gone).
        state = inspect(self)
        columns = state.mapper.primary_key
        values = state.identity or tuple(state.dict.get(str(column.key)) for column in columns)
        key = ", ".join(f"{column.name}={value!r}" for column, value in zip(columns, values, strict=True))
        return f"{type(self).__name__}({key})"


class WakeSchedule(Base):
    """One wake schedule of a conversation (``agent_wake_schedules``)."""

    __tablename__ = "agent_wake_schedules"
    __table_args__ = (
        PrimaryKeyConstraint("conversation_id", "schedule_id", name="agent_wake_schedules_pkey"),
        UniqueConstraint("schedule_id", name="agent_wake_schedules_schedule_id_key"),
        ForeignKeyConstraint(
            ["skill_id"],
            [_SKILL_ID],
            name="agent_wake_schedules_skill_fk",
            ondelete="SET NULL",
        ),
        ForeignKeyConstraint(
            ["context_from_schedule_id"],
            ["agent_wake_schedules.schedule_id"],
            name="agent_wake_schedules_context_from_fk",
            ondelete="SET NULL",
        ),
        _one_of("execution_mode", enums.EXECUTION_MODES, "agent_wake_schedules_execution_mode_check"),
        _one_of("status", enums.SCHEDULE_STATUSES, "agent_wake_schedules_status_check"),
        _one_of("missed_fire_policy", enums.MISSED_FIRE_POLICIES, "agent_wake_schedules_missed_fire_policy_check"),
        Index(
            "idx_wake_schedules_next_fire",
            "next_fire_at",
            postgresql_where=text("status = 'active' AND next_fire_at IS NOT NULL"),
        ),
        Index("idx_wake_schedules_conv_status", "conversation_id", "status"),
        Index("idx_wake_schedules_user", "user_id"),
        Index(
            "idx_wake_schedules_context_from",
            "context_from_schedule_id",
            postgresql_where=text("context_from_schedule_id IS NOT NULL"),
        ),
    )
    __mapper_args__ = {"eager_defaults": True}

    conversation_id: Mapped[uuid.UUID]
    schedule_id: Mapped[uuid.UUID]
    user_id: Mapped[uuid.UUID]
    agent_id: Mapped[uuid.UUID]
    skill_id: Mapped[uuid.UUID | None]
    schedule_type: Mapped[str]
    schedule_config: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    task_prompt: Mapped[str | None]
    execution_mode: Mapped[enums.ExecutionMode] = mapped_column(Text, server_default=text("'inline'"))
    status: Mapped[enums.ScheduleStatus] = mapped_column(Text, server_default=text("'active'"))
    next_fire_at: Mapped[datetime | None]
    last_fired_at: Mapped[datetime | None]
    name: Mapped[str | None]
    missed_fire_policy: Mapped[enums.MissedFirePolicy] = mapped_column(Text, server_default=text("'coalesce'"))
    context_from_schedule_id: Mapped[uuid.UUID | None]
    include_conversation_history: Mapped[bool] = mapped_column(server_default=text("true"))
    date_created: Mapped[datetime] = _now_column()
    date_updated: Mapped[datetime] = _updated_column()


class WebhookSubscription(Base):
    """One inbound webhook of a conversation (``webhook_subscriptions``).

    The HMAC secret is stored only as Fernet ciphertext; the repository
    decrypts it on request.
    """

    __tablename__ = "webhook_subscriptions"
    __table_args__ = (
        PrimaryKeyConstraint("conversation_id", "subscription_id", name="webhook_subscriptions_pkey"),
        UniqueConstraint("subscription_id", name="webhook_subscriptions_subscription_id_key"),
        ForeignKeyConstraint(
            ["default_skill_id"],
            [_SKILL_ID],
            name="webhook_subscriptions_default_skill_fk",
            ondelete="SET NULL",
        ),
        _one_of("execution_mode", enums.EXECUTION_MODES, "webhook_subscriptions_execution_mode_check"),
        CheckConstraint(
            "verification_scheme ~ '^[a-z0-9_]+$' AND length(verification_scheme) BETWEEN 1 AND 64",
            name="webhook_subscriptions_verification_scheme_check",
            info={"columns": ("verification_scheme",)},
        ),
        _one_of("status", enums.SUBSCRIPTION_STATUSES, "webhook_subscriptions_status_check"),
        Index("idx_webhook_subs_conv", "conversation_id", "status"),
        Index("idx_webhook_subs_user", "user_id"),
    )
    __mapper_args__ = {"eager_defaults": True}

    conversation_id: Mapped[uuid.UUID]
    subscription_id: Mapped[uuid.UUID]
    user_id: Mapped[uuid.UUID]
    agent_id: Mapped[uuid.UUID]
    default_skill_id: Mapped[uuid.UUID | None]
    name: Mapped[str | None]
    secret_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    allowed_source_pattern: Mapped[str | None]
    execution_mode: Mapped[enums.ExecutionMode] = mapped_column(Text, server_default=text("'inline'"))
    task_prompt_template: Mapped[str | None]
    verification_scheme: Mapped[str] = mapped_column(server_default=text("'generic_hmac_sha256'"))
    status: Mapped[enums.SubscriptionStatus] = mapped_column(Text, server_default=text("'active'"))
    rate_limit_per_minute: Mapped[int | None]
    last_fired_at: Mapped[datetime | None]
    date_created: Mapped[datetime] = _now_column()
    date_updated: Mapped[datetime] = _updated_column()


class WakeFire(Base):
    """One fire of a schedule or a webhook (``wake_fires``), the history.

    A fire is written as ``dispatching`` first, so a crash mid-dispatch
    leaves evidence, then finalized to a terminal status.
    """

    __tablename__ = "wake_fires"
    __table_args__ = (
        PrimaryKeyConstraint("conversation_id", "fire_id", name="wake_fires_pkey"),
        UniqueConstraint("fire_id", name="wake_fires_fire_id_key"),
        ForeignKeyConstraint(
            ["schedule_id"],
            ["agent_wake_schedules.schedule_id"],
            name="wake_fires_schedule_fk",
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["webhook_subscription_id"],
            ["webhook_subscriptions.subscription_id"],
            name="wake_fires_webhook_subscription_fk",
            ondelete="SET NULL",
        ),
        CheckConstraint(
            "NOT (schedule_id IS NOT NULL AND webhook_subscription_id IS NOT NULL)",
            name="wake_fires_one_source_check",
            info={"columns": ("schedule_id", "webhook_subscription_id")},
        ),
        _one_of("status", enums.FIRE_STATUSES, "wake_fires_status_check"),
    )
    __mapper_args__ = {"eager_defaults": True}

    conversation_id: Mapped[uuid.UUID]
    fire_id: Mapped[uuid.UUID]
    schedule_id: Mapped[uuid.UUID | None]
    webhook_subscription_id: Mapped[uuid.UUID | None]
    scheduled_fire_at: Mapped[datetime | None]
    actual_fired_at: Mapped[datetime] = _now_column()
    status: Mapped[enums.FireStatus] = mapped_column(Text)
    display_suppressed: Mapped[bool] = mapped_column(server_default=text("false"))
    output_text: Mapped[str | None]
    latency_ms: Mapped[int | None]
    error: Mapped[str | None]
    date_created: Mapped[datetime] = _now_column()


Index(
    "idx_wake_fires_schedule_time",
    WakeFire.schedule_id,
    WakeFire.actual_fired_at.desc(),
    postgresql_where=text("schedule_id IS NOT NULL"),
)
Index(
    "idx_wake_fires_webhook_time",
    WakeFire.webhook_subscription_id,
    WakeFire.actual_fired_at.desc(),
    postgresql_where=text("webhook_subscription_id IS NOT NULL"),
)
Index("idx_wake_fires_conv_time", WakeFire.conversation_id, WakeFire.actual_fired_at.desc())
# Added by step 7: one fire per schedule period, and the recovery job's scan.
Index(
    "idx_wake_fires_schedule_period",
    WakeFire.conversation_id,
    WakeFire.schedule_id,
    WakeFire.scheduled_fire_at,
    unique=True,
    postgresql_where=text("schedule_id IS NOT NULL"),
)
Index(
    "idx_wake_fires_dispatching",
    WakeFire.actual_fired_at,
    postgresql_where=text("status = 'dispatching'"),
)

# The partitioned tables agent-wake owns (the stand-ins are the host's). The
# partition guard and the error translation take what they know from here.
WAKE_TABLES: Final[tuple[Table, ...]] = tuple(
    cast(Table, model.__table__) for model in (WakeSchedule, WakeFire, WebhookSubscription)
)
