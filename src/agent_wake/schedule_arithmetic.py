"""The reference schedule arithmetic of the built-in schedule types.

:func:`next_fire` is a ready-made ``next_fire`` for
:meth:`~agent_wake.schedule_repository.WakeScheduleRepository.claim_due`;
:func:`first_fire` gives a new schedule its first ``next_fire_at``. Every
instant returned is aware and in UTC. What a *period* is, per type:

- ``interval`` / ``every_n_hours``: every ``seconds`` / ``n`` hours, counted
  from the claimed period (from ``now`` for a new schedule);
- ``daily_at``: ``hour:minute`` wall-clock time in ``tz`` on each local date.
  A time that does not exist that day (skipped by a DST change) moves forward
  to the first instant that exists, the end of the gap: 02:30 on a
  spring-forward day in America/Los_Angeles fires at 03:00 PDT. A time that
  happens twice (a fall-back change) fires once, at its first occurrence;
- ``cron``: the minutes matching a five-field expression, in UTC (see
  :func:`next_fire` for the dialect);
- ``random_within_window``: ``fires_per_day`` instants, whole seconds drawn
  uniformly at random from ``start_hour`` to ``end_hour`` of each local date
  in ``tz``, from a generator seeded with the schedule id and the date: every
  tick, in any process, draws the same instants for a day. Two draws on the
  same second are one fire. An overnight window (``end_hour`` before
  ``start_hour``, 22 to 6) ends on the next local date; its draws belong to
  the date it starts on. The window's ends are resolved like ``daily_at``'s
  times, so a window a DST change removes entirely (02:00 to 03:00 on a
  spring-forward day) collapses onto the end of the gap;
- ``one_shot_at`` / ``relative_delay``: a single period, at ``fire_at_iso``
  (read as UTC when it has no offset) / ``delay`` after the schedule was
  made; none after it.

A period past the end of year 9999 does not exist: the schedule is finished.
Application-registered types have no reference arithmetic; both functions
refuse them.
"""

import random
import uuid
from calendar import monthrange
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import MAXYEAR, UTC, date, datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from agent_wake import _validation as check
from agent_wake import enums
from agent_wake.errors import InvalidInputError
from agent_wake.models import WakeSchedule

# The config syntax's one source: the cron fields' bounds and names, the delays, the one-shot instants.
from agent_wake.schedule_configs import (
    CRON_FIELDS,
    CRON_LAST_DAY,
    DayOfWeekNumbering,
    cron_items,
    delay_seconds,
    fire_at_instant,
    validate_schedule_config,
)
from agent_wake.schedule_repository import DueSchedule

__all__ = ["BUILT_IN_SCHEDULE_TYPES", "first_fire", "next_fire"]

BUILT_IN_SCHEDULE_TYPES: Final = (
    "cron",
    "daily_at",
    "every_n_hours",
    "interval",
    "one_shot_at",
    "random_within_window",
    "relative_delay",
)
_ONE_SHOT_TYPES: Final = ("one_shot_at", "relative_delay")
_MINUTE: Final = timedelta(minutes=1)
_SECOND: Final = timedelta(seconds=1)
# The Gregorian calendar, weekdays included, repeats every 400 years (146,097
# days, a whole number of weeks): an expression that matches at all matches
# within 400 years of any instant.
_CALENDAR_CYCLE_YEARS: Final = 400
# 2000 is a leap year: each month at its longest.
_LONGEST_MONTH: Final = {month: monthrange(2000, month)[1] for month in range(1, 13)}


def next_fire(schedule: DueSchedule | WakeSchedule, now: datetime) -> datetime | None:
    """The period after the claimed one (``schedule.next_fire_at``), or None when the schedule is finished.

    Usable as is as ``claim_due(now, limit=..., next_fire=next_fire)``. With
    ``missed_fire_policy`` ``catch_up`` it is the first period strictly after
    the claimed one, so the following ticks claim every missed period in
    turn; with ``coalesce`` the first period strictly after ``now``, so missed
    periods are skipped. ``one_shot_at`` and ``relative_delay`` have none.

    ``cron`` expressions have five fields (minute, hour, day of month, month,
    day of week), read in UTC. Each is ``*`` or a list of values, ranges
    (``a-b``) and steps (``*/s``, ``a-b/s``, and ``a/s`` for ``a`` to the
    field's end); months may be named ``jan``-``dec`` and weekdays ``sun``-``sat``;
    day of week 0 and 7 are both Sunday. The day of month may also list
    ``last``, the last day of each month. When both day fields are
    restricted, a day matches if either does (POSIX): ``0 0 29 2 1`` fires
    on February 29 and on every Monday of February. As in Vixie cron and
    cronie, a day field that starts with ``*`` (``*``, ``*/2``) is not
    restricted: with it the other day field must match as well. A config
    with ``day_of_week_numbering`` ``"apscheduler"`` reads day of week 0 as
    Monday to 6 as Sunday (``mon``-``sun``), and a day must match both day
    fields (see :class:`~agent_wake.schedule_configs.CronConfig`).

    Refuses (:class:`~agent_wake.errors.InvalidInputError`) a naive ``now``,
    a schedule without an aware ``next_fire_at`` or a known
    ``missed_fire_policy``, a type that is not built in (supply your own
    ``next_fire``, which may call this one for the built-in types), a config
    its type's model refuses, a cron expression that can never match (its
    days of month fit none of its months, as in ``0 0 30 2 *``), and a
    ``random_within_window`` schedule without a ``schedule_id``.

    Costs no database round trip (a zone's tz file is read once per
    process). A cron search steps by month, day and field value, never
    minute by minute: a few thousand steps at most, even for an expression
    that matches once in eight years.
    """
    now = check.require_aware("now", now)
    period = check.require_aware("schedule.next_fire_at", schedule.next_fire_at)
    policy = check.require_choice(
        "schedule.missed_fire_policy", schedule.missed_fire_policy, enums.MISSED_FIRE_POLICIES
    )
    config = _built_in_config(schedule.schedule_type, schedule.schedule_config)
    if schedule.schedule_type in _ONE_SHOT_TYPES:
        return None
    # The period is later than now only when a caller asks before it is due;
    # what follows it must still come after it.
    after = period if policy == "catch_up" else max(now, period)
    try:
        return _repeating_after(schedule.schedule_type, config, after, anchor=period, schedule_id=schedule.schedule_id)
    except OverflowError:
        return None


def first_fire(
    schedule_type: str, schedule_config: Mapping[str, Any], *, now: datetime, schedule_id: uuid.UUID | None = None
) -> datetime | None:
    """The first period of a schedule made at ``now``: what to pass as ``create(next_fire_at=...)``.

    ``relative_delay`` fires at ``now + delay``; ``one_shot_at`` at its
    instant, or never (None) when that is before ``now``; ``interval`` and
    ``every_n_hours`` one step after ``now``; the others at their first
    period after ``now`` (see the module). ``random_within_window`` draws
    from the schedule's id: pass the ``schedule_id`` you then give ``create``.

    Refuses what :func:`next_fire` refuses. Costs what :func:`next_fire` costs.
    """
    now = check.require_aware("now", now)
    config = _built_in_config(schedule_type, schedule_config)
    try:
        if schedule_type == "one_shot_at":
            instant = fire_at_instant(config["fire_at_iso"])
            return instant if instant >= now else None
        if schedule_type == "relative_delay":
            return now + timedelta(seconds=delay_seconds(config["delay"]))
        return _repeating_after(schedule_type, config, now, anchor=now, schedule_id=schedule_id)
    except OverflowError:
        return None


def _built_in_config(schedule_type: str, schedule_config: Any) -> dict[str, Any]:
    if schedule_type not in BUILT_IN_SCHEDULE_TYPES:
        raise InvalidInputError(
            "schedule_type",
            f"{check.shown(str(schedule_type))} has no reference arithmetic; pass claim_due a next_fire of "
            "your own for it (it may call agent_wake.schedule_arithmetic.next_fire for the built-in types)",
        )
    return validate_schedule_config(schedule_type, schedule_config)


def _repeating_after(
    schedule_type: str, config: Mapping[str, Any], after: datetime, *, anchor: datetime, schedule_id: uuid.UUID | None
) -> datetime:
    """The first period strictly after ``after`` of a repeating type; steps count from ``anchor``."""
    if schedule_type == "interval":
        return _step_after(anchor, timedelta(seconds=config["seconds"]), after)
    if schedule_type == "every_n_hours":
        return _step_after(anchor, timedelta(hours=config["n"]), after)
    if schedule_type == "daily_at":
        return _daily_after(config, after)
    if schedule_type == "cron":
        # A config without the key is standard cron (CronConfig).
        cron = _parse_cron(config["expr"], config.get("day_of_week_numbering", "cron"))
        _require_can_match(cron, config["expr"])
        return _cron_after(cron, after)
    if schedule_id is None:
        raise InvalidInputError("schedule_id", "is required for random_within_window: its instants are drawn from it")
    return _random_after(config, after, schedule_id)


def _step_after(anchor: datetime, step: timedelta, after: datetime) -> datetime:
    return anchor + step * ((after - anchor) // step + 1)


def _local_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of the naive wall-clock time ``wall`` in ``zone``.

    An ambiguous time resolves to its first occurrence (fold 0); a time in a
    gap to the end of the gap, found by bisection on whole seconds between
    the gap's two readings (tz database changes fall on whole seconds).
    """
    earlier_offset = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if earlier_offset.astimezone(zone).replace(tzinfo=None) == wall:
        return earlier_offset
    # In a gap fold 1 reads the wall time with the offset after the change,
    # which lands before the change; fold 0 with the offset before it, after.
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    seconds = (earlier_offset - low) // _SECOND
    start = 0
    while start < seconds:
        middle = (start + seconds) // 2
        if (low + middle * _SECOND).astimezone(zone).replace(tzinfo=None) >= wall:
            seconds = middle
        else:
            start = middle + 1
    return low + seconds * _SECOND


def _daily_after(config: Mapping[str, Any], after: datetime) -> datetime:
    zone = ZoneInfo(config["tz"])
    at = time(config["hour"], config["minute"])
    # No period of an earlier local date can follow an instant of this one.
    day = after.astimezone(zone).date()
    while (period := _local_instant(datetime.combine(day, at), zone)) <= after:
        day += timedelta(days=1)
    return period


def _random_after(config: Mapping[str, Any], after: datetime, schedule_id: uuid.UUID) -> datetime:
    zone = ZoneInfo(config["tz"])
    day = after.astimezone(zone).date()
    if config["end_hour"] < config["start_hour"]:
        # The overnight window that started the day before may still be open.
        day -= timedelta(days=1)
    while True:
        later = [instant for instant in _random_instants(config, zone, day, schedule_id) if instant > after]
        if later:
            return later[0]
        day += timedelta(days=1)


def _random_instants(config: Mapping[str, Any], zone: ZoneInfo, day: date, schedule_id: uuid.UUID) -> list[datetime]:
    """The instants of the window that starts on ``day``, in order: the same for every caller,
    whatever its process or Python version."""
    start_hour, end_hour = config["start_hour"], config["end_hour"]
    # 24 is the midnight that ends the day; an end before the start is on the next day.
    end_day = day + timedelta(days=1) if end_hour == 24 or end_hour < start_hour else day
    start = _local_instant(datetime.combine(day, time(start_hour)), zone)
    span = (_local_instant(datetime.combine(end_day, time(end_hour % 24)), zone) - start) // _SECOND
    # A str seed is hashed with SHA-512, and random() is the one method whose
    # sequence Python promises to keep across versions for a given seed.
    draws = random.Random(f"{schedule_id}/{day.isoformat()}")
    offsets = {int(draws.random() * span) for _ in range(config["fires_per_day"])}
    return [start + offset * _SECOND for offset in sorted(offsets)]


@dataclass(frozen=True, slots=True)
class _Cron:
    """A parsed cron expression: the values of each field, in order; weekdays 0-6 from Sunday."""

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    last_day: bool  # the day of month lists "last"
    months: tuple[int, ...]
    weekdays: frozenset[int]
    either_day: bool  # a day matches if either day field does

    def matches_day(self, day: int, weekday: int, days_in_month: int) -> bool:
        by_day = day in self.days or (self.last_day and day == days_in_month)
        if self.either_day:
            return by_day or weekday in self.weekdays
        return by_day and weekday in self.weekdays

    def first_time(self, hour: int, minute: int) -> tuple[int, int] | None:
        """The first (hour, minute) of the expression at or after ``hour:minute`` of a day."""
        for candidate in self.hours:
            if candidate == hour:
                later = [value for value in self.minutes if value >= minute]
                if later:
                    return candidate, later[0]
            elif candidate > hour:
                return candidate, self.minutes[0]
        return None


def _parse_cron(expr: str, numbering: DayOfWeekNumbering) -> _Cron:
    """The fields of an expression ``validate_schedule_config`` accepted with ``numbering``."""
    parts = expr.split()
    values = [
        _cron_field(cron_items(part, names, numbering), lowest, highest, names)
        for part, (_, lowest, highest, names) in zip(parts, CRON_FIELDS[numbering], strict=True)
    ]
    minutes, hours, days, months, weekdays = values
    # APScheduler counts from Monday, cron from Sunday (7 is Sunday again).
    from_sunday = 1 if numbering == "apscheduler" else 0
    return _Cron(
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=frozenset(days),
        last_day=CRON_LAST_DAY in parts[2].lower().split(","),
        months=tuple(sorted(months)),
        weekdays=frozenset((weekday + from_sunday) % 7 for weekday in weekdays),
        # APScheduler requires both day fields whatever they hold.
        either_day=numbering == "cron" and not (parts[2].startswith("*") or parts[4].startswith("*")),
    )


def _cron_field(items: list[str], lowest: int, highest: int, names: tuple[str, ...]) -> set[int]:
    values: set[int] = set()
    for item in items:
        # Validation lets "last" into the day of month only, alone; _parse_cron reads it.
        if item.lower() == CRON_LAST_DAY:
            continue
        span, slash, step = item.partition("/")
        if span == "*":
            first, last = lowest, highest
        else:
            start, dash, end = span.partition("-")
            first = _cron_value(start, lowest, names)
            # "a/s" runs from a to the field's end, as in Vixie cron and cronie.
            last = _cron_value(end, lowest, names) if dash else highest if slash else first
        values.update(range(first, last + 1, int(step) if slash else 1))
    return values


def _cron_value(token: str, lowest: int, names: tuple[str, ...]) -> int:
    name = token.lower()
    return names.index(name) + lowest if name in names else int(token)


def _require_can_match(cron: _Cron, expr: str) -> None:
    # Every weekday falls on every day of every month in some year of the
    # cycle, so only the days of month can rule an expression out: with
    # either day field enough the weekdays alone match in any month, and
    # every month has a last day.
    if (
        cron.either_day
        or cron.last_day
        or any(day <= _LONGEST_MONTH[month] for month in cron.months for day in cron.days)
    ):
        return
    raise InvalidInputError(
        "schedule_config.expr",
        f"{check.shown(expr)} never matches: none of its months has any of its days of month",
    )


def _cron_after(cron: _Cron, after: datetime) -> datetime:
    """The first minute strictly after ``after`` that matches ``cron`` (one that can match).

    Raises OverflowError when it would lie past year 9999.
    """
    start = after.astimezone(UTC).replace(second=0, microsecond=0) + _MINUTE
    for year in range(start.year, min(start.year + _CALENDAR_CYCLE_YEARS, MAXYEAR) + 1):
        for month in cron.months:
            if (year, month) < (start.year, start.month):
                continue
            this_month = (year, month) == (start.year, start.month)
            # date.weekday() of the 1st (Monday = 0) is the cron weekday (Sunday = 0) of the day before it.
            weekday_before_first = date(year, month, 1).weekday()
            days_in_month = monthrange(year, month)[1]
            for day in range(start.day if this_month else 1, days_in_month + 1):
                if not cron.matches_day(day, (weekday_before_first + day) % 7, days_in_month):
                    continue
                today = this_month and day == start.day
                found = cron.first_time(start.hour, start.minute) if today else (cron.hours[0], cron.minutes[0])
                if found is not None:
                    return datetime(year, month, day, *found, tzinfo=UTC)
    raise OverflowError("the next matching minute lies past year 9999")
