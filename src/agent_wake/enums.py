"""The allowed values of the enum-like text columns, defined once.

Each ``Literal`` type is what the models and repositories are typed with; the
tuple next to it is what the CHECK constraints and the input validation are
built from, so the three can never disagree.
"""

from typing import Final, Literal, get_args

__all__ = [
    "EXECUTION_MODES",
    "FINAL_FIRE_STATUSES",
    "FIRE_STATUSES",
    "MISSED_FIRE_POLICIES",
    "OUTPUT_FIRE_STATUSES",
    "SCHEDULE_STATUSES",
    "SUBSCRIPTION_STATUSES",
    "ExecutionMode",
    "FireStatus",
    "MissedFirePolicy",
    "ScheduleStatus",
    "SubscriptionStatus",
]

ExecutionMode = Literal["inline", "spawn"]
EXECUTION_MODES: Final[tuple[ExecutionMode, ...]] = get_args(ExecutionMode)

ScheduleStatus = Literal["active", "paused", "expired"]
SCHEDULE_STATUSES: Final[tuple[ScheduleStatus, ...]] = get_args(ScheduleStatus)

MissedFirePolicy = Literal["coalesce", "catch_up"]
MISSED_FIRE_POLICIES: Final[tuple[MissedFirePolicy, ...]] = get_args(MissedFirePolicy)

SubscriptionStatus = Literal["active", "paused"]
SUBSCRIPTION_STATUSES: Final[tuple[SubscriptionStatus, ...]] = get_args(SubscriptionStatus)

FireStatus = Literal[
    "dispatching",
    "fired",
    "fired_silent",
    "yielded",
    "skipped_busy",
    "skipped_rate_limit",
    "skipped_cap",
    "skipped_no_handler",
    "failed",
]
FIRE_STATUSES: Final[tuple[FireStatus, ...]] = get_args(FireStatus)

# What `finalize_success` may write: every terminal status but "failed",
# which has its own method because it carries an error instead of output.
FINAL_FIRE_STATUSES: Final[tuple[FireStatus, ...]] = tuple(
    status for status in FIRE_STATUSES if status not in ("dispatching", "failed")
)

# The fires whose output a context-from reader may use.
OUTPUT_FIRE_STATUSES: Final[tuple[FireStatus, ...]] = ("fired", "fired_silent")
