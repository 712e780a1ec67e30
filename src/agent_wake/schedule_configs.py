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
from typing import Annotated, Any, Final, Literal
from zoneinfo import available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

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

DayOfWeekNumbering = Literal["cron", "apscheduler"]
# (name, lowest, highest, names) of a cron field; names[0] stands for lowest.
_CronField = tuple[str, int, int, tuple[str, ...]]
_MINUTE_TO_MONTH: Final[tuple[_CronField, ...]] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    (
        "month",
        1,
        12,
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    ),
)
# The five cron fields, in order, for each day-of-week numbering (see
# CronConfig); the schedule arithmetic reads the same tables, so the syntax
# is defined once.
CRON_FIELDS: Final[dict[DayOfWeekNumbering, tuple[_CronField, ...]]] = {
    "cron": (*_MINUTE_TO_MONTH, ("day of week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat"))),
    "apscheduler": (*_MINUTE_TO_MONTH, ("day of week", 0, 6, ("mon", "tue", "wed", "thu", "fri", "sat", "sun"))),
}
# The last day of each month: an item of its own in the day-of-month field, in any case.
CRON_LAST_DAY: Final = "last"
# APScheduler 3 read an item of a field with names that starts with a letter
# as the name, or range of names, it starts with, and ignored the rest.
_APSCHEDULER_NAMES = re.compile(r"[A-Za-z]+(?:-[A-Za-z]+)?")


def cron_items(part: str, names: tuple[str, ...], numbering: DayOfWeekNumbering) -> list[str]:
    """The items of one field of a cron expression as ``numbering`` reads them; the schedule
    arithmetic reads fields through it.

    With ``"apscheduler"``, an item of the month or day-of-week field that
    starts with a name is that name or range of names alone, as APScheduler 3
    read it: ``mon-fri/2`` is ``mon-fri``, ``mon-5`` is ``mon``.
    """
    items = part.split(",")
    if numbering == "cron" or not names:
        return items
    return [match[0] if (match := _APSCHEDULER_NAMES.match(item)) else item for item in items]


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


def _cron_expression(expr: str, numbering: DayOfWeekNumbering) -> str:
    parts = expr.split()
    if len(parts) != len(CRON_FIELDS[numbering]):
        raise ValueError(f"a cron expression has 5 fields, got {len(parts)}")
    for part, (field, lowest, highest, names) in zip(parts, CRON_FIELDS[numbering], strict=True):
        for item in cron_items(part, names, numbering):
            if field == "day of month" and item.lower() == CRON_LAST_DAY:
                continue
            if CRON_LAST_DAY in re.split("[-/]", item.lower()):
                where = "in a range or step" if field == "day of month" else "outside the day-of-month field"
                raise ValueError(
                    f"{field}: {CRON_LAST_DAY!r} (the last day of the month) must be an item of its own "
                    f"in the day-of-month field, not {where}"
                )
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


# The older implementation also wrote a leading plus, leading zeros and an
# upper-case unit ("+5m", "05m", "30M"). The unit is spelled out, not matched
# with IGNORECASE, which would also take "\u017f" (long s) for "s".
_DELAY = re.compile(r"\+?0*([1-9][0-9]{0,9})([smhdSMHD])")
SECONDS_PER_UNIT: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
# Beyond ten years a schedule is a mistake, and datetime arithmetic overflows soon after.
MAX_SCHEDULE_SECONDS: Final = 10 * 366 * 86_400


def delay_seconds(delay: str) -> int:
    """The seconds of a ``relative_delay`` ``delay``; the schedule arithmetic reads delays through it.

    Raises ValueError, with the rule, for one that is not a whole number
    from 1 (an optional ``+`` and leading zeros allowed) followed by ``s``,
    ``m``, ``h`` or ``d`` in either case. The ten-year bound is not checked here.
    """
    match = _DELAY.fullmatch(delay)
    if not match:
        raise ValueError("must be a positive whole number followed by s, m, h or d, like '30m'")
    return int(match[1]) * SECONDS_PER_UNIT[match[2].lower()]


def _delay(value: str) -> str:
    if delay_seconds(value) > MAX_SCHEDULE_SECONDS:
        raise ValueError(f"must be at most {MAX_SCHEDULE_SECONDS // 86_400} days (about ten years)")
    return value


# A date, T or a space, a time and maybe an offset: fromisoformat alone would
# also take a date with no time, and any character at all between the two.
_ISO_DATE_TIME = re.compile(r"[0-9W-]+[T ][0-9:.,]+(?:Z|[+-][0-9:.]+)?")


def fire_at_instant(fire_at_iso: str) -> datetime:
    """The instant, in UTC, of a ``one_shot_at`` ``fire_at_iso``; the schedule arithmetic reads it through this.

    A date and time without a UTC offset is read as UTC, as the older
    implementation wrote it. Raises ValueError, with the rule, for text that
    is not an ISO 8601 date and time, and for an instant outside years 1 to
    9999 once converted to UTC.
    """
    moment: datetime | None = None
    if _ISO_DATE_TIME.fullmatch(fire_at_iso):
        # Refused below, not chained: fromisoformat's own error repeats the whole value.
        with suppress(ValueError):
            moment = datetime.fromisoformat(fire_at_iso)
    if moment is None:
        raise ValueError("must be an ISO 8601 date and time, like '2026-05-25T14:00:00+00:00'")
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("must lie between years 1 and 9999 once converted to UTC") from None


def _fire_at_iso(value: str) -> str:
    fire_at_instant(value)
    return value


class ScheduleConfig(BaseModel):
    """Base of the built-in ``schedule_config`` models: the values of the keys
    a model names must already have their type ("14" is not an hour, nor is
    True); any other key is kept verbatim and not interpreted.

    Keys are kept because the older implementation's stored configs carry
    some (``"label"``, ``"jitter"``) and must be saved again unchanged. It
    follows that a misspelt optional key is not caught: ``{"hour": 9,
    "minutes": 30}`` is stored as given and fires at 09:00. A misspelt
    required key still fails, as the required one is then missing. Refuses
    an unknown key whose value is not JSON (a tuple, a date, bytes).
    """

    model_config = ConfigDict(extra="allow", frozen=True, strict=True, ser_json_inf_nan="constants")
    # Checked as JSON, so that nothing is converted on its way to jsonb; NaN
    # is dumped as NaN (ser_json_inf_nan), for json.dumps to refuse, not as null.
    __pydantic_extra__: dict[str, JsonValue]


class DailyAtConfig(ScheduleConfig):
    """``daily_at``: every day at ``hour:minute`` in ``tz``."""

    hour: int = Field(ge=0, le=23)
    minute: int = Field(default=0, ge=0, le=59)
    tz: TimeZoneName = "UTC"


class EveryNHoursConfig(ScheduleConfig):
    """``every_n_hours``: every ``n`` hours."""

    n: int = Field(ge=1, le=24 * 366)


class RandomWithinWindowConfig(ScheduleConfig):
    """``random_within_window``: ``fires_per_day`` random instants between the two hours.

    The window runs from ``start_hour:00`` to ``end_hour:00`` of each local
    date in ``tz`` (``end_hour`` 24 is the midnight that ends the date). An
    ``end_hour`` before ``start_hour`` is an overnight window: 22 to 6 runs
    from 22:00 of a local date to 06:00 of the next. Refuses ``end_hour``
    equal to ``start_hour``: that could mean no time or the whole day (the
    whole day is 0 to 24).
    """

    start_hour: int = Field(ge=0, le=23)
    end_hour: int = Field(ge=1, le=24)
    tz: TimeZoneName = "UTC"
    fires_per_day: int = Field(default=1, ge=1, le=1440)

    @model_validator(mode="after")
    def _window_is_not_empty(self) -> "RandomWithinWindowConfig":
        if self.end_hour == self.start_hour:
            raise ValueError(
                "end_hour must differ from start_hour: equal hours could mean no time or the whole day "
                "(the whole day is 0 to 24)"
            )
        return self


class OneShotAtConfig(ScheduleConfig):
    """``one_shot_at``: once, at ``fire_at_iso``.

    An ISO 8601 date and time; one without a UTC offset
    (``"2026-05-25T14:00:00"``) means UTC, and is kept as given.
    """

    fire_at_iso: Annotated[str, AfterValidator(_fire_at_iso)]


class CronConfig(ScheduleConfig):
    """``cron``: a five-field cron expression (minute hour day month weekday), in UTC.

    ``day_of_week_numbering`` says how the expression was written:

    - ``"cron"``, and a config without the key: standard cron. Day of week
      0 and 7 are Sunday, 1 Monday, 6 Saturday (names ``sun``-``sat``); when
      both day fields are restricted a day matching either fires, and a day
      field starting with ``*`` is not restricted (Vixie cron, cronie);
    - ``"apscheduler"``: as APScheduler 3's ``CronTrigger.from_crontab``
      read it. Day of week 0 is Monday, 6 Sunday (names ``mon``-``sun``), 7
      is refused; a day must match both day fields (a field of ``*``
      matches every day). An item of the month or day-of-week field that
      starts with a name is that name or range of names alone, whatever
      follows: ``mon-fri/2`` is Monday to Friday, ``mon-5`` Monday,
      ``jan/3`` January. A few expressions APScheduler 3 refused are
      accepted, read as standard cron reads them: a range from a number to a
      name (``1-fri``), a step longer than its range (``1-5/10``).

    The key is returned only when it was given, so that a stored config
    without it is returned unchanged. The day-of-month field may hold
    ``last`` (any case) as an item of its own, the last day of each month;
    ``last`` is refused in a range or step and in any other field.
    """

    # Before expr, whose validator reads it.
    day_of_week_numbering: DayOfWeekNumbering = "cron"
    expr: str

    @field_validator("expr")
    @classmethod
    def _expression(cls, expr: str, info: ValidationInfo) -> str:
        # Missing from info.data when it was refused itself: that error is reported first.
        return _cron_expression(expr, info.data.get("day_of_week_numbering", "cron"))

    @model_serializer(mode="wrap")
    def _numbering_only_when_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        if "day_of_week_numbering" not in self.model_fields_set:
            del dumped["day_of_week_numbering"]
        return dumped


class RelativeDelayConfig(ScheduleConfig):
    """``relative_delay``: once, after ``delay`` (``"30s"``, ``"30m"``, ``"2h"``, ``"1d"``).

    Also accepted, and kept as given, as the older implementation wrote
    them: an upper-case unit (``"30M"``, 30 minutes), leading zeros
    (``"05m"``) and a leading plus (``"+5m"``), both 5 minutes. Refuses zero,
    a negative number, any other unit, and more than 3660 days.
    """

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
    "tz": "UTC"}``; a ``cron`` config without ``day_of_week_numbering``
    stays without it) and values in their stored form (a cron expression's
    fields joined by single spaces). ``config`` itself is not changed.

    Refuses with ``InvalidInputError``, whose ``field`` is
    ``schedule_type``, ``schedule_config`` or ``schedule_config.<key>`` and
    whose ``rule`` says what is wrong: a ``schedule_type`` that is not a
    string or not known (the rule lists the known ones); a ``config`` that
    is not a dict, nests deeper than :data:`MAX_CONFIG_DEPTH`, is larger
    than :data:`MAX_CONFIG_BYTES` as JSON, has a key or value its model
    refuses, or cannot be stored as ``jsonb``. The built-in models keep a
    key they do not know verbatim (so a misspelt optional key is not
    caught; see :class:`ScheduleConfig`); an application's model decides
    for its own. A message repeats a value only as a short repr.

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
