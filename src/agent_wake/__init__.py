"""agent-wake: the SQLAlchemy 2.0 data layer for long-running agents' wake
schedules, fires and webhook subscriptions on PostgreSQL."""

from agent_wake.database import create_engine_and_session_factory, resolve_database_url
from agent_wake.enums import (
    EXECUTION_MODES,
    FINAL_FIRE_STATUSES,
    FIRE_STATUSES,
    MISSED_FIRE_POLICIES,
    OUTPUT_FIRE_STATUSES,
    SCHEDULE_STATUSES,
    SUBSCRIPTION_STATUSES,
    ExecutionMode,
    FireStatus,
    MissedFirePolicy,
    ScheduleStatus,
    SubscriptionStatus,
)
from agent_wake.errors import (
    AgentWakeError,
    ConflictError,
    ConnectionLostError,
    ConstraintViolationError,
    DatabaseError,
    DatabaseTimeoutError,
    DuplicateError,
    InvalidInputError,
    NotFoundError,
    PartitionScopeError,
    RetryableError,
    SecretDecryptionError,
    SerializationError,
    StatusConflictError,
    TransactionAbortedError,
)
from agent_wake.fire_repository import FireFailure, FireSuccess, WakeFireRepository
from agent_wake.migration_config import STANDIN_VERSIONS, WAKE_VERSIONS, alembic_config
from agent_wake.models import Base, WakeFire, WakeSchedule, WebhookSubscription
from agent_wake.partition_guard import GuardMode, PartitionSpan, install_partition_guard, spans_partitions
from agent_wake.schedule_configs import register_schedule_type, validate_schedule_config
from agent_wake.schedule_repository import ClaimedFire, NextFire, ScheduleChanges, WakeScheduleRepository
from agent_wake.secret_box import SecretBox
from agent_wake.standins import AgentSkill, Conversation, StandinBase
from agent_wake.webhook_repository import WebhookSubscriptionRepository

__all__ = [
    "EXECUTION_MODES",
    "FINAL_FIRE_STATUSES",
    "FIRE_STATUSES",
    "MISSED_FIRE_POLICIES",
    "OUTPUT_FIRE_STATUSES",
    "SCHEDULE_STATUSES",
    "STANDIN_VERSIONS",
    "SUBSCRIPTION_STATUSES",
    "WAKE_VERSIONS",
    "AgentSkill",
    "AgentWakeError",
    "Base",
    "ClaimedFire",
    "ConflictError",
    "ConnectionLostError",
    "ConstraintViolationError",
    "Conversation",
    "DatabaseError",
    "DatabaseTimeoutError",
    "DuplicateError",
    "ExecutionMode",
    "FireFailure",
    "FireStatus",
    "FireSuccess",
    "GuardMode",
    "InvalidInputError",
    "MissedFirePolicy",
    "NextFire",
    "NotFoundError",
    "PartitionScopeError",
    "PartitionSpan",
    "RetryableError",
    "ScheduleChanges",
    "ScheduleStatus",
    "SecretBox",
    "SecretDecryptionError",
    "SerializationError",
    "StandinBase",
    "StatusConflictError",
    "SubscriptionStatus",
    "TransactionAbortedError",
    "WakeFire",
    "WakeFireRepository",
    "WakeSchedule",
    "WakeScheduleRepository",
    "WebhookSubscription",
    "WebhookSubscriptionRepository",
    "alembic_config",
    "create_engine_and_session_factory",
    "install_partition_guard",
    "register_schedule_type",
    "resolve_database_url",
    "spans_partitions",
    "validate_schedule_config",
]
