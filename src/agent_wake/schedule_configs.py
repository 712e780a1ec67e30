"""The shape of ``schedule_config`` for each ``schedule_type``.

One pydantic model per known type; an application registers its own types
with :func:`register_schedule_type`. :func:`validate_schedule_config`
refuses an unknown type and a config that does not fit its model, naming
the field and the rule.
"""

import json
import re
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Final
from zoneinfo import available_timezones

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent_wake._validation import require_utf8
from agent_wake.errors import InvalidInputError

__all__ = [
    "CronConfig",
    "DailyAtConfig",
    "EveryNHoursConfig",
    "IntervalConfig",
    "OneShotAtConfig",
    "RandomWithinWindowConfig",
    "RelativeDelayConfig",
    "ScheduleConfig",
    "register_schedule_type",
    "validate_schedule_config",
]


@cache
def _zone_keys() -> frozenset[str]:
    # Listing the zones walks the tz database; once per process is enough.
    return frozenset(available_timezones())


def _time_zone(name: str) -> str:
    # Only real zone keys: ZoneInfo itself would also take paths such as "../etc".
    if name not in _zone_keys():
        raise ValueError(f"unknown time zone {name!r}")
    return name


TimeZoneName = Annotated[str, AfterValidator(_time_zone)]

# (lowest, highest, names) of the five cron fields, in order.
_CRON_FIELDS: Final = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    (
        "month",
        1,
        12,
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    ),
    ("day of week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)


def _cron_value(token: str, lowest: int, highest: int, names: tuple[str, ...], field: str) -> int:
    if token.lower() in names:
        return names.index(token.lower()) + lowest
    # isdigit() alone would take other scripts' digits, such as "٣".
    if not (token.isascii() and token.isdigit()):
        raise ValueError(f"{field}: {token!r} is not a number")
    value = int(token)
    if not lowest <= value <= highest:
        raise ValueError(f"{field}: {value} is outside {lowest}-{highest}")
    return value


def _cron_expression(expr: str) -> str:
    parts = expr.split()
    if len(parts) != len(_CRON_FIELDS):
        raise ValueError(f"a cron expression has 5 fields, got {len(parts)}")
    for part, (field, lowest, highest, names) in zip(parts, _CRON_FIELDS, strict=True):
        for item in part.split(","):
            span, _, step = item.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                raise ValueError(f"{field}: step {step!r} must be a positive number")
            if span == "*":
                continue
            start, dash, end = span.partition("-")
            first = _cron_value(start, lowest, highest, names, field)
            if dash and _cron_value(end, lowest, highest, names, field) < first:
                raise ValueError(f"{field}: range {span!r} runs backwards")
    return " ".join(parts)


_DELAY = re.compile(r"^([1-9][0-9]{0,9})([smhd])$")
_SECONDS_PER_UNIT: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
# Beyond ten years a schedule is a mistake, and datetime arithmetic overflows soon after.
MAX_SCHEDULE_SECONDS: Final = 10 * 366 * 86_400


def _delay(value: str) -> str:
    match = _DELAY.match(value)
    if not match:
        raise ValueError("must be a positive whole number followed by s, m, h or d, like '30m'")
    if int(match[1]) * _SECONDS_PER_UNIT[match[2]] > MAX_SCHEDULE_SECONDS:
        raise ValueError("must be at most ten years")
    return value


def _aware_iso(value: str) -> str:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError("must be an ISO 8601 date and time") from exc
    if moment.tzinfo is None:
        raise ValueError("must carry a UTC offset, like '2026-05-25T14:00:00+00:00'")
    return value


class ScheduleConfig(BaseModel):
    """Base of the ``schedule_config`` models: unknown keys are refused, and
    values must already have their type ("14" is not an hour, nor is True)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DailyAtConfig(ScheduleConfig):
    """``daily_at``: every day at ``hour:minute`` in ``tz``."""

    hour: int = Field(ge=0, le=23)
    minute: int = Field(default=0, ge=0, le=59)
    tz: TimeZoneName = "UTC"


class EveryNHoursConfig(ScheduleConfig):
    """``every_n_hours``: every ``n`` hours."""

    n: int = Field(ge=1, le=24 * 366)


class RandomWithinWindowConfig(ScheduleConfig):
    """``random_within_window``: ``fires_per_day`` random instants between the two hours."""

    start_hour: int = Field(ge=0, le=23)
    end_hour: int = Field(ge=1, le=24)
    tz: TimeZoneName = "UTC"
    fires_per_day: int = Field(default=1, ge=1, le=1440)

    @model_validator(mode="after")
    def _window_is_not_empty(self) -> "RandomWithinWindowConfig":
        if self.end_hour <= self.start_hour:
            raise ValueError("end_hour must be after start_hour")
        return self


class OneShotAtConfig(ScheduleConfig):
    """``one_shot_at``: once, at ``fire_at_iso`` (with a UTC offset)."""

    fire_at_iso: Annotated[str, AfterValidator(_aware_iso)]


class CronConfig(ScheduleConfig):
    """``cron``: a five-field cron expression (minute hour day month weekday)."""

    expr: Annotated[str, AfterValidator(_cron_expression)]


class RelativeDelayConfig(ScheduleConfig):
    """``relative_delay``: once, after ``delay`` (``"30s"``, ``"30m"``, ``"2h"``, ``"1d"``)."""

    delay: Annotated[str, AfterValidator(_delay)]


class IntervalConfig(ScheduleConfig):
    """``interval``: every ``seconds`` seconds."""

    seconds: int = Field(ge=1, le=MAX_SCHEDULE_SECONDS)


_registry: dict[str, type[BaseModel]] = {
    "daily_at": DailyAtConfig,
    "every_n_hours": EveryNHoursConfig,
    "random_within_window": RandomWithinWindowConfig,
    "one_shot_at": OneShotAtConfig,
    "cron": CronConfig,
    "relative_delay": RelativeDelayConfig,
    "interval": IntervalConfig,
}


def register_schedule_type(schedule_type: str, model: type[BaseModel]) -> None:
    """Accept ``schedule_type`` from now on, its config validated by ``model``.

    Refuses to replace a type that is already registered.
    """
    if not re.fullmatch(r"[a-z0-9_]{1,64}", schedule_type):
        raise InvalidInputError("schedule_type", "must be a slug of a-z, 0-9 and _")
    if schedule_type in _registry:
        raise InvalidInputError("schedule_type", f"{schedule_type!r} is already registered")
    _registry[schedule_type] = model


def validate_schedule_config(schedule_type: str, config: Any) -> dict[str, Any]:
    """Return ``config`` checked against its type's model, as the JSON to store."""
    model = _registry.get(schedule_type)
    if model is None:
        raise InvalidInputError(
            "schedule_type",
            f"unknown type {schedule_type!r}; known: {', '.join(sorted(_registry))} "
            "(register others with register_schedule_type)",
        )
    if not isinstance(config, dict):
        raise InvalidInputError("schedule_config", "must be a JSON object (a dict)")
    try:
        validated = model.model_validate(config).model_dump(mode="json")
    except ValidationError as exc:
        error = exc.errors()[0]
        location = ".".join(str(part) for part in error["loc"])
        field = f"schedule_config.{location}" if location else "schedule_config"
        raise InvalidInputError(field, f"{error['msg']} (schedule_type {schedule_type!r})") from exc
    _require_storable_json(validated)
    return validated


def _require_storable_json(config: dict[str, Any]) -> None:
    # jsonb refuses \u0000 and lone surrogates; an application's own model may let them through.
    text = json.dumps(config, ensure_ascii=False)
    if "\\u0000" in text:
        raise InvalidInputError("schedule_config", "must not contain NUL characters")
    require_utf8("schedule_config", text)
