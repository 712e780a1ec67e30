"""The shape of ``schedule_config`` for each ``schedule_type``.

One pydantic model per known type; an application registers its own types
with :func:`register_schedule_type`. :func:`validate_schedule_config`
refuses an unknown type and a config that does not fit its model, naming
the field and the rule.

Whatever the model, a config is also refused when it

- nests objects and lists more than :data:`MAX_CONFIG_DEPTH` (32) levels
  deep, counting the config itself as the first: checked by an iterative
  walk before pydantic or ``json`` sees the config, since both recurse and
  thousands of levels exhaust their stack. The built-in types use one
  level; 32 leaves an application's own models room while staying far
  below any recursion limit;
- is larger than :data:`MAX_CONFIG_BYTES` (64 KiB) as compact UTF-8 JSON.
  The stored JSON is measured; the config as given is also refused early
  when its values and text alone could not fit, so that a huge config
  costs one cheap walk. The built-in configs take well under 200 bytes;
  64 KiB stays small next to a row while leaving an application's own
  types generous room;
- cannot be written as JSON that ``jsonb`` stores (bytes that are not
  UTF-8, NaN, NUL characters, lone surrogates, unknown Python objects).

Messages show a caller's value only as a short repr (at most about 40
characters), so neither a long value nor the bulk of one ends up in a log.
"""

import json
import re
from collections.abc import Mapping
from contextlib import suppress
from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any, Final
from zoneinfo import available_timezones

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent_wake._validation import ECHO_CHARS, clipped, require_utf8, shown
from agent_wake.errors import InvalidInputError

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
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

MAX_CONFIG_DEPTH: Final = 32
MAX_CONFIG_BYTES: Final = 64 * 1024
_TOO_LARGE: Final = f"must be at most {MAX_CONFIG_BYTES} bytes as compact UTF-8 JSON"
# An application's model may put the whole value in its message, and a path
# into a config 32 levels deep is long: both are cut to this many characters.
_MAX_RULE_CHARS: Final = 200


@cache
def _zone_keys() -> frozenset[str]:
    # Listing the zones walks the tz database; once per process is enough.
    return frozenset(available_timezones())


def _time_zone(name: str) -> str:
    # Only real zone keys: ZoneInfo itself would also take paths such as "../etc".
    if name not in _zone_keys():
        raise ValueError(f"unknown time zone {shown(name)}")
    return name


TimeZoneName = Annotated[str, AfterValidator(_time_zone)]

# (name, lowest, highest, names) of the five cron fields, in order; the schedule
# arithmetic reads the same table, so the syntax is defined once.
CRON_FIELDS: Final = (
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


# [0-9], not isdigit(): that would take other scripts' digits, such as "٣".
# Leading zeros aside, four digits at most: no field goes past 59, and int()
# of thousands of digits is slow (Python refuses it past 4300).
_CRON_NUMBER = re.compile(r"0*([0-9]{1,4})")


def _cron_number(text: str, highest: int) -> int | None:
    match = _CRON_NUMBER.fullmatch(text)
    if match is None:
        return None
    value = int(match[1])
    return value if value <= highest else None


def _cron_value(token: str, lowest: int, highest: int, names: tuple[str, ...], field: str) -> int:
    if token.lower() in names:
        return names.index(token.lower()) + lowest
    value = _cron_number(token, highest)
    if value is None or value < lowest:
        spelled = f" or a name ({names[0]}-{names[-1]})" if names else ""
        raise ValueError(f"{field}: {shown(token)} must be a number from {lowest} to {highest}{spelled}")
    return value


def _cron_expression(expr: str) -> str:
    parts = expr.split()
    if len(parts) != len(CRON_FIELDS):
        raise ValueError(f"a cron expression has 5 fields, got {len(parts)}")
    for part, (field, lowest, highest, names) in zip(parts, CRON_FIELDS, strict=True):
        for item in part.split(","):
            span, slash, step = item.partition("/")
            # A step past the field's largest value is a mistake: it never reaches a second value.
            if slash and _cron_number(step, highest) in (None, 0):
                raise ValueError(f"{field}: step {shown(step)} must be a whole number from 1 to {highest}")
            if span == "*":
                continue
            start, dash, end = span.partition("-")
            first = _cron_value(start, lowest, highest, names, field)
            if dash and _cron_value(end, lowest, highest, names, field) < first:
                raise ValueError(f"{field}: range {shown(span)} runs backwards")
    return " ".join(parts)


_DELAY = re.compile(r"([1-9][0-9]{0,9})([smhd])")
# Shared with the schedule arithmetic, like CRON_FIELDS.
SECONDS_PER_UNIT: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
# Beyond ten years a schedule is a mistake, and datetime arithmetic overflows soon after.
MAX_SCHEDULE_SECONDS: Final = 10 * 366 * 86_400


def _delay(value: str) -> str:
    match = _DELAY.fullmatch(value)
    if not match:
        raise ValueError("must be a positive whole number followed by s, m, h or d, like '30m'")
    if int(match[1]) * SECONDS_PER_UNIT[match[2]] > MAX_SCHEDULE_SECONDS:
        raise ValueError(f"must be at most {MAX_SCHEDULE_SECONDS // 86_400} days (about ten years)")
    return value


# A date, T or a space, a time and maybe an offset: fromisoformat alone would
# also take a date with no time, and any character at all between the two.
_ISO_DATE_TIME = re.compile(r"[0-9W-]+[T ][0-9:.,]+(?:Z|[+-][0-9:.]+)?")


def _aware_iso(value: str) -> str:
    moment: datetime | None = None
    if _ISO_DATE_TIME.fullmatch(value):
        # Refused below, not chained: fromisoformat's own error repeats the whole value.
        with suppress(ValueError):
            moment = datetime.fromisoformat(value)
    if moment is None:
        raise ValueError("must be an ISO 8601 date and time, like '2026-05-25T14:00:00+00:00'")
    if moment.tzinfo is None:
        raise ValueError("must carry a UTC offset, like '2026-05-25T14:00:00+00:00'")
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("must lie between years 1 and 9999 once converted to UTC") from None
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

    Refuses a type that is not a slug, a ``model`` that is not a pydantic
    model class, and replacing a type that is already registered.
    """
    if not (isinstance(schedule_type, str) and re.fullmatch(r"[a-z0-9_]{1,64}", schedule_type)):
        raise InvalidInputError("schedule_type", "must be a slug of 1 to 64 characters of a-z, 0-9 and _")
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise InvalidInputError("model", "must be a pydantic BaseModel subclass")
    if schedule_type in _registry:
        raise InvalidInputError("schedule_type", f"{shown(schedule_type)} is already registered")
    _registry[schedule_type] = model


def validate_schedule_config(schedule_type: str, config: Any) -> dict[str, Any]:
    """Return ``config`` checked against the model of ``schedule_type``, as the JSON to store.

    Accepts the seven built-in types (``daily_at``, ``every_n_hours``,
    ``random_within_window``, ``one_shot_at``, ``cron``, ``relative_delay``,
    ``interval``; their models are in this module) and any type registered
    with :func:`register_schedule_type`, and a ``dict`` whose values already
    have their types (``"14"`` is not an hour). The repositories call it on
    every ``create`` and on an ``update`` of ``schedule_config``; call it
    yourself to check a config at your API's edge, before any transaction.

    Returns a new dict: the model's JSON form, with its defaults filled in
    (``{"hour": 14}`` for ``daily_at`` gives ``{"hour": 14, "minute": 0,
    "tz": "UTC"}``) and values in their stored form (a cron expression's
    fields joined by single spaces). ``config`` itself is not changed.

    Refuses with ``InvalidInputError``, whose ``field`` is
    ``schedule_type``, ``schedule_config`` or ``schedule_config.<key>`` and
    whose ``rule`` says what is wrong: a ``schedule_type`` that is not a
    string or not known (the rule lists the known ones); a ``config`` that
    is not a dict, nests deeper than :data:`MAX_CONFIG_DEPTH`, is larger
    than :data:`MAX_CONFIG_BYTES` as JSON, has a key or value its model
    refuses (unknown keys are refused), or cannot be stored as ``jsonb``.
    A message repeats a value only as a short repr.

    Costs one walk of the config, its model's validation and one
    ``json.dumps``; no database.
    """
    if not isinstance(schedule_type, str):
        raise InvalidInputError("schedule_type", "must be a string")
    model = _registry.get(schedule_type)
    if model is None:
        raise InvalidInputError(
            "schedule_type",
            f"unknown type {shown(schedule_type)}; known: {', '.join(sorted(_registry))} "
            "(register others with register_schedule_type)",
        )
    if not isinstance(config, dict):
        raise InvalidInputError("schedule_config", "must be a JSON object (a dict)")
    _require_shallow_and_small(config)
    validated = _validated(model, schedule_type, config)
    if isinstance(validated, InvalidInputError):
        raise validated
    written = _as_json(validated)
    if written is None:
        raise InvalidInputError(
            "schedule_config", "cannot be written as JSON (bytes that are not UTF-8, NaN, an unknown type, ...)"
        )
    dumped, text = written
    _require_storable_json(text)
    return dumped


_CONTAINERS: Final = (Mapping, list, tuple, set, frozenset)


def _require_shallow_and_small(config: dict[str, Any]) -> None:
    # A walk with its own stack, not recursion, so that no depth can exhaust
    # Python's. It also stops a config that could not fit in MAX_CONFIG_BYTES
    # as given (one byte at least per value, per character of text) before
    # pydantic spends time on it, and so bounds this walk's own work.
    pending: list[tuple[Any, int]] = [(config, 1)]
    size = 0
    while pending:
        value, depth = pending.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise InvalidInputError(
                "schedule_config", f"must nest at most {MAX_CONFIG_DEPTH} levels of objects and lists"
            )
        children = [*value.keys(), *value.values()] if isinstance(value, Mapping) else list(value)
        size += len(children)
        for child in children:
            if isinstance(child, str | bytes):
                size += len(child)
            elif isinstance(child, _CONTAINERS):
                pending.append((child, depth + 1))
        if size > MAX_CONFIG_BYTES:
            raise InvalidInputError("schedule_config", _TOO_LARGE)


def _validated(model: type[BaseModel], schedule_type: str, config: dict[str, Any]) -> BaseModel | InvalidInputError:
    # The refusal is returned, to be raised outside the except block: chained,
    # the ValidationError would print an unknown key whole however long it is.
    try:
        return model.model_validate(config)
    except ValidationError as exc:
        error = exc.errors()[0]
    location = ".".join(_location_part(part) for part in error["loc"])
    field = clipped(f"schedule_config.{location}" if location else "schedule_config", _MAX_RULE_CHARS)
    rule = clipped(error["msg"], _MAX_RULE_CHARS)
    return InvalidInputError(field, f"{rule} (schedule_type {shown(schedule_type)})")


def _location_part(part: int | str) -> str:
    # A key the model does not know is the caller's own text.
    if isinstance(part, str) and (len(part) > ECHO_CHARS or not part.isprintable()):
        return shown(part)
    return str(part)


def _as_json(validated: BaseModel) -> tuple[dict[str, Any], str] | None:
    # An application's model may hold what JSON cannot carry (pydantic's
    # serialization errors and UnicodeDecodeError are ValueErrors). They are
    # dropped here, so that none is chained to the InvalidInputError raised
    # instead: a UnicodeDecodeError holds the bytes.
    try:
        dumped = validated.model_dump(mode="json")
        return dumped, json.dumps(dumped, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return None


# A NUL escaped by json.dumps: "\u0000" after an even number of backslashes
# (an odd number means the text held a backslash followed by "u0000").
_ESCAPED_NUL: Final = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _require_storable_json(text: str) -> None:
    # jsonb refuses \u0000 and lone surrogates; an application's own model may let them through.
    if _ESCAPED_NUL.search(text):
        raise InvalidInputError("schedule_config", "must not contain NUL characters")
    require_utf8("schedule_config", text)
    if len(text.encode("utf-8")) > MAX_CONFIG_BYTES:
        raise InvalidInputError("schedule_config", _TOO_LARGE)
