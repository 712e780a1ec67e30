"""The reference next_fire and first_fire of the built-in schedule types.

Every expected instant is written out by hand, in UTC; the DST transitions of
2026 were read from the tz database with zdump (America/Los_Angeles: 10:00Z
on 8 March and 09:00Z on 1 November; Europe/Berlin: 01:00Z on 29 March and
25 October) and the weekdays with date(1). The 1sts of the months of 2026
fall on: January Thursday, February Sunday, March Sunday, April Wednesday,
May Friday, June Monday, July Wednesday, August Saturday, September Tuesday.
"""

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from agent_wake import InvalidInputError, WakeSchedule, WakeScheduleRepository, register_schedule_type
from agent_wake.enums import MissedFirePolicy
from agent_wake.schedule_arithmetic import first_fire, next_fire
from agent_wake.testing.factories import WakeFactory

SCHEDULE_ID = uuid.UUID("0190f0a2-7c4e-7b1a-9d2e-3f4a5b6c7d8e")
OTHER_SCHEDULE_ID = uuid.UUID("0190f0a2-7c4e-7b1a-9d2e-000000000001")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def schedule(
    schedule_type: str,
    config: dict[str, Any],
    *,
    period: str,
    policy: MissedFirePolicy = "coalesce",
    schedule_id: uuid.UUID = SCHEDULE_ID,
) -> WakeSchedule:
    """A schedule as claim_due hands it to next_fire: ``period`` is the claimed one."""
    return WakeSchedule(
        conversation_id=uuid.UUID(int=1),
        schedule_id=schedule_id,
        schedule_type=schedule_type,
        schedule_config=config,
        next_fire_at=at(period),
        missed_fire_policy=policy,
    )


# --- interval and every_n_hours: steps counted from the claimed period ---

STEPPED = [
    pytest.param("interval", {"seconds": 1800}, "catch_up", "15:10", "14:30", id="interval-catch-up-next-step"),
    pytest.param("interval", {"seconds": 1800}, "coalesce", "15:10", "15:30", id="interval-coalesce-skips-missed"),
    pytest.param("interval", {"seconds": 1800}, "coalesce", "15:30", "16:00", id="interval-coalesce-strictly-after"),
    pytest.param("interval", {"seconds": 1800}, "coalesce", "14:00", "14:30", id="interval-claimed-on-time"),
    pytest.param("every_n_hours", {"n": 3}, "catch_up", "22:00", "17:00", id="hours-catch-up-next-step"),
    pytest.param("every_n_hours", {"n": 3}, "coalesce", "22:00", "23:00", id="hours-coalesce-skips-missed"),
]


@pytest.mark.parametrize(("schedule_type", "config", "policy", "now", "expected"), STEPPED)
def test_stepped_types_count_steps_from_the_claimed_period(
    schedule_type: str, config: dict[str, Any], policy: MissedFirePolicy, now: str, expected: str
) -> None:
    claimed = schedule(schedule_type, config, period="2026-05-25T14:00Z", policy=policy)
    assert next_fire(claimed, at(f"2026-05-25T{now}Z")) == at(f"2026-05-25T{expected}Z")


FIRST_FIRES = [
    pytest.param("interval", {"seconds": 1800}, "2026-05-25T14:37:30Z", id="interval"),
    pytest.param("every_n_hours", {"n": 3}, "2026-05-25T17:07:30Z", id="every_n_hours"),
    pytest.param("relative_delay", {"delay": "30s"}, "2026-05-25T14:08:00Z", id="delay-seconds"),
    pytest.param("relative_delay", {"delay": "30m"}, "2026-05-25T14:37:30Z", id="delay-minutes"),
    pytest.param("relative_delay", {"delay": "2h"}, "2026-05-25T16:07:30Z", id="delay-hours"),
    pytest.param("relative_delay", {"delay": "1d"}, "2026-05-26T14:07:30Z", id="delay-days"),
    pytest.param("relative_delay", {"delay": "30M"}, "2026-05-25T14:37:30Z", id="delay-upper-case-unit"),
    pytest.param("relative_delay", {"delay": "05m"}, "2026-05-25T14:12:30Z", id="delay-leading-zero"),
    pytest.param("relative_delay", {"delay": "+5m"}, "2026-05-25T14:12:30Z", id="delay-leading-plus"),
    pytest.param("one_shot_at", {"fire_at_iso": "2026-05-25T18:00:00+02:00"}, "2026-05-25T16:00Z", id="one-shot"),
    pytest.param("daily_at", {"hour": 9}, "2026-05-26T09:00Z", id="daily-at-tomorrow"),
    pytest.param("daily_at", {"hour": 15, "minute": 30}, "2026-05-25T15:30Z", id="daily-at-today"),
    pytest.param(
        "daily_at", {"hour": 9, "label": "morning", "jitter": 30}, "2026-05-26T09:00Z", id="unknown-keys-not-read"
    ),
    pytest.param("cron", {"expr": "*/20 * * * *"}, "2026-05-25T14:20Z", id="cron"),
]


@pytest.mark.parametrize(("schedule_type", "config", "expected"), FIRST_FIRES)
def test_first_fire_is_the_first_period_after_now(schedule_type: str, config: dict[str, Any], expected: str) -> None:
    assert first_fire(schedule_type, config, now=at("2026-05-25T14:07:30Z")) == at(expected)


# --- one-shots ---


@pytest.mark.parametrize("policy", ["coalesce", "catch_up"])
@pytest.mark.parametrize(
    ("schedule_type", "config"),
    [("one_shot_at", {"fire_at_iso": "2026-05-25T14:00:00+00:00"}), ("relative_delay", {"delay": "30m"})],
)
def test_a_one_shot_has_no_period_after_the_claimed_one(
    schedule_type: str, config: dict[str, Any], policy: MissedFirePolicy
) -> None:
    claimed = schedule(schedule_type, config, period="2026-05-25T14:00Z", policy=policy)
    assert next_fire(claimed, at("2026-05-25T14:00:05Z")) is None


def test_a_one_shot_due_right_now_still_fires() -> None:
    config = {"fire_at_iso": "2026-05-25T16:00:00+02:00"}
    assert first_fire("one_shot_at", config, now=at("2026-05-25T14:00Z")) == at("2026-05-25T14:00Z")


def test_a_one_shot_already_past_never_fires() -> None:
    config = {"fire_at_iso": "2026-05-25T16:00:00+02:00"}
    assert first_fire("one_shot_at", config, now=at("2026-05-25T14:00:01Z")) is None


@pytest.mark.parametrize("fire_at_iso", ["2026-05-25T14:00:00", "2026-05-25 14:00:00"])
def test_a_one_shot_at_without_an_offset_fires_at_that_time_in_utc(fire_at_iso: str) -> None:
    # now is 10:00Z: the time is read as UTC, neither as now's offset nor as the host's zone.
    fired = first_fire("one_shot_at", {"fire_at_iso": fire_at_iso}, now=at("2026-05-25T12:00+02:00"))
    assert fired == at("2026-05-25T14:00Z")
    assert first_fire("one_shot_at", {"fire_at_iso": fire_at_iso}, now=at("2026-05-25T14:00:01Z")) is None


def test_instants_are_returned_in_utc() -> None:
    fired = first_fire("one_shot_at", {"fire_at_iso": "2026-05-25T16:00:00+02:00"}, now=at("2026-05-25T12:00Z"))
    daily = first_fire("daily_at", {"hour": 9, "tz": "America/Los_Angeles"}, now=at("2026-05-25T12:00Z"))
    assert fired is not None
    assert daily is not None
    assert (fired.tzinfo, daily.tzinfo) == (UTC, UTC)


# --- daily_at: wall-clock time in tz, across DST ---

LOS_ANGELES_0230 = {"hour": 2, "minute": 30, "tz": "America/Los_Angeles"}
LOS_ANGELES_0130 = {"hour": 1, "minute": 30, "tz": "America/Los_Angeles"}
BERLIN_0230 = {"hour": 2, "minute": 30, "tz": "Europe/Berlin"}

DAILY = [
    pytest.param({"hour": 9, "tz": "America/Los_Angeles"}, "2026-05-25T12:00Z", "2026-05-25T16:00Z", id="pdt"),
    pytest.param({"hour": 9, "tz": "America/Los_Angeles"}, "2026-05-25T16:00Z", "2026-05-26T16:00Z", id="strictly"),
    pytest.param(LOS_ANGELES_0230, "2026-03-06T11:00Z", "2026-03-07T10:30Z", id="la-day-before-spring-pst"),
    pytest.param(LOS_ANGELES_0230, "2026-03-07T11:00Z", "2026-03-08T10:00Z", id="la-spring-gap-moves-to-03:00-pdt"),
    pytest.param(LOS_ANGELES_0230, "2026-03-08T10:00Z", "2026-03-09T09:30Z", id="la-day-after-spring-pdt"),
    pytest.param(LOS_ANGELES_0130, "2026-10-31T09:00Z", "2026-11-01T08:30Z", id="la-fall-first-occurrence-pdt"),
    pytest.param(LOS_ANGELES_0130, "2026-11-01T08:30Z", "2026-11-02T09:30Z", id="la-fall-no-second-occurrence"),
    pytest.param(LOS_ANGELES_0130, "2026-11-01T09:00Z", "2026-11-02T09:30Z", id="la-fall-between-occurrences"),
    pytest.param(BERLIN_0230, "2026-03-27T02:00Z", "2026-03-28T01:30Z", id="berlin-day-before-spring-cet"),
    pytest.param(BERLIN_0230, "2026-03-28T02:00Z", "2026-03-29T01:00Z", id="berlin-spring-gap-moves-to-03:00-cest"),
    pytest.param(BERLIN_0230, "2026-03-29T01:00Z", "2026-03-30T00:30Z", id="berlin-day-after-spring-cest"),
    pytest.param(BERLIN_0230, "2026-10-24T02:00Z", "2026-10-25T00:30Z", id="berlin-fall-first-occurrence-cest"),
    pytest.param(BERLIN_0230, "2026-10-25T00:30Z", "2026-10-26T01:30Z", id="berlin-fall-no-second-occurrence"),
]


@pytest.mark.parametrize(("config", "now", "expected"), DAILY)
def test_daily_at_fires_at_the_wall_clock_time_of_its_zone(config: dict[str, Any], now: str, expected: str) -> None:
    assert first_fire("daily_at", config, now=at(now)) == at(expected)


def test_daily_at_catch_up_returns_the_next_missed_day() -> None:
    claimed = schedule("daily_at", {"hour": 9}, period="2026-05-20T09:00Z", policy="catch_up")
    assert next_fire(claimed, at("2026-05-25T12:00Z")) == at("2026-05-21T09:00Z")


def test_daily_at_coalesce_skips_the_missed_days() -> None:
    claimed = schedule("daily_at", {"hour": 9}, period="2026-05-20T09:00Z", policy="coalesce")
    assert next_fire(claimed, at("2026-05-25T12:00Z")) == at("2026-05-26T09:00Z")


def test_daily_at_catch_up_walks_through_a_spring_forward_gap() -> None:
    claimed = schedule("daily_at", LOS_ANGELES_0230, period="2026-03-07T10:30Z", policy="catch_up")
    assert next_fire(claimed, at("2026-03-10T00:00Z")) == at("2026-03-08T10:00Z")


# --- cron: five fields in UTC ---

CRON = [
    pytest.param("0 * * * *", "2026-05-25T14:00Z", "2026-05-25T15:00Z", id="strictly-after"),
    pytest.param("0 * * * *", "2026-05-25T14:30:15Z", "2026-05-25T15:00Z", id="seconds-ignored"),
    pytest.param("0 * * * *", "2026-05-25T14:59:30Z", "2026-05-25T15:00Z", id="the-very-next-minute"),
    pytest.param("*/15 9-17 * * mon-fri", "2026-05-22T17:45Z", "2026-05-25T09:00Z", id="friday-evening-to-monday"),
    pytest.param("5/20 * * * *", "2026-05-25T14:06Z", "2026-05-25T14:25Z", id="start-with-step-runs-to-field-end"),
    pytest.param("10-40/15 * * * *", "2026-05-25T14:26Z", "2026-05-25T14:40Z", id="range-with-step"),
    pytest.param("10-40/15 * * * *", "2026-05-25T14:41Z", "2026-05-25T15:10Z", id="range-with-step-next-hour"),
    pytest.param("30 4 1,15 * *", "2026-05-15T04:30Z", "2026-06-01T04:30Z", id="list-next-month"),
    pytest.param("0 9 1 jan,jul *", "2026-05-25T00:00Z", "2026-07-01T09:00Z", id="month-names"),
    pytest.param("0 12 * * 0", "2026-11-28T12:00Z", "2026-11-29T12:00Z", id="sunday-as-0"),
    pytest.param("0 12 * * 7", "2026-11-28T12:00Z", "2026-11-29T12:00Z", id="sunday-as-7"),
    pytest.param("0 12 * * SUN", "2026-11-28T12:00Z", "2026-11-29T12:00Z", id="sunday-by-name-any-case"),
    pytest.param("0 0 * * 5-7", "2026-11-28T00:00Z", "2026-11-29T00:00Z", id="range-ending-at-7"),
    pytest.param("59 23 31 12 *", "2026-12-31T23:59Z", "2027-12-31T23:59Z", id="next-year"),
    pytest.param("0 0 31 2,5 *", "2026-01-01T00:00Z", "2026-05-31T00:00Z", id="skips-months-too-short"),
]


@pytest.mark.parametrize(("expr", "now", "expected"), CRON)
def test_cron_fires_at_the_first_matching_minute_after_now(expr: str, now: str, expected: str) -> None:
    assert first_fire("cron", {"expr": expr}, now=at(now)) == at(expected)


def test_cron_catch_up_returns_the_next_missed_minute() -> None:
    claimed = schedule("cron", {"expr": "0 * * * *"}, period="2026-05-25T10:00Z", policy="catch_up")
    assert next_fire(claimed, at("2026-05-25T13:20Z")) == at("2026-05-25T11:00Z")


def test_cron_coalesce_skips_the_missed_minutes() -> None:
    claimed = schedule("cron", {"expr": "0 * * * *"}, period="2026-05-25T10:00Z", policy="coalesce")
    assert next_fire(claimed, at("2026-05-25T13:20Z")) == at("2026-05-25T14:00Z")


POSIX_DAYS = [
    # 1 February 2026 is a Sunday: the first Monday comes before the 29th (there is none in 2026).
    pytest.param("0 0 29 2 1", "2026-01-01T00:00Z", "2026-02-02T00:00Z", id="feb-29-or-monday:a-monday"),
    # 28 February 2028 is a Monday; the 29th, a Tuesday, matches by its day of month.
    pytest.param("0 0 29 2 1", "2028-02-28T00:00Z", "2028-02-29T00:00Z", id="feb-29-or-monday:the-29th"),
    # No 29 February in 2029; 5 February 2029 is its first Monday.
    pytest.param("0 0 29 2 1", "2028-02-29T00:00Z", "2029-02-05T00:00Z", id="feb-29-or-monday:next-year"),
    # Monday 25 May 2026: the next Friday comes before any Friday the 13th.
    pytest.param("0 0 13 * fri", "2026-05-25T00:00Z", "2026-05-29T00:00Z", id="13th-or-friday"),
]


@pytest.mark.parametrize(("expr", "now", "expected"), POSIX_DAYS)
def test_cron_with_both_day_fields_restricted_matches_either(expr: str, now: str, expected: str) -> None:
    assert first_fire("cron", {"expr": expr}, now=at(now)) == at(expected)


def test_cron_day_field_starting_with_a_star_must_match_as_well() -> None:
    # Odd days that are Mondays (Vixie cron, cronie): June 2026's Mondays are 1, 8, 15, 22 and 29.
    assert first_fire("cron", {"expr": "0 0 */2 * 1"}, now=at("2026-06-01T00:00Z")) == at("2026-06-15T00:00Z")


LEAP_DAYS = [
    pytest.param("2026-03-01T00:00Z", "2028-02-29T00:00Z", id="next-leap-year"),
    pytest.param("2028-02-28T12:00Z", "2028-02-29T00:00Z", id="next-day"),
    pytest.param("2096-03-01T00:00Z", "2104-02-29T00:00Z", id="2100-is-not-a-leap-year"),
]


@pytest.mark.parametrize(("now", "expected"), LEAP_DAYS)
def test_cron_on_february_29_waits_for_a_leap_year(now: str, expected: str) -> None:
    assert first_fire("cron", {"expr": "0 0 29 2 *"}, now=at(now)) == at(expected)


def test_cron_finds_a_match_years_away_by_stepping_over_fields() -> None:
    started = time.perf_counter()
    for _ in range(20):
        first_fire("cron", {"expr": "0 0 29 2 *"}, now=at("2096-03-01T00:00Z"))
    # About 50 µs a call; a minute-by-minute scan of those eight years takes seconds.
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("expr", ["0 0 31 4 *", "0 0 30 2 *", "0 0 30,31 2 *", "0 0 31 2,4,6,9,11 *", "0 0 31 4 */2"])
def test_cron_that_can_never_match_is_refused(expr: str) -> None:
    with pytest.raises(InvalidInputError, match="never matches") as caught:
        first_fire("cron", {"expr": expr}, now=at("2026-01-01T00:00Z"))
    assert caught.value.field == "schedule_config.expr"


def test_cron_on_the_30th_of_february_or_a_monday_is_not_refused() -> None:
    assert first_fire("cron", {"expr": "0 0 30 2 1"}, now=at("2026-01-01T00:00Z")) == at("2026-02-02T00:00Z")


LAST_DAYS = [
    pytest.param("0 0 last * *", "2027-02-01T00:00Z", "2027-02-28T00:00Z", id="february-2027"),
    pytest.param("0 0 last * *", "2028-02-01T00:00Z", "2028-02-29T00:00Z", id="february-2028-a-leap-year"),
    pytest.param("0 0 last * *", "2026-04-30T00:00Z", "2026-05-31T00:00Z", id="strictly-after"),
    pytest.param("30 23 15,LAST * *", "2026-02-16T00:00Z", "2026-02-28T23:30Z", id="in-a-list-any-case"),
    pytest.param("0 0 last 4,6 *", "2026-05-01T00:00Z", "2026-06-30T00:00Z", id="its-months-only"),
    pytest.param("0 0 30,last 2 *", "2026-01-01T00:00Z", "2026-02-28T00:00Z", id="february-30-or-last-not-refused"),
    # Monday 25 May 2026: Friday the 29th comes before Sunday the 31st.
    pytest.param("0 0 last * fri", "2026-05-25T00:00Z", "2026-05-29T00:00Z", id="last-day-or-friday"),
]


@pytest.mark.parametrize(("expr", "now", "expected"), LAST_DAYS)
def test_cron_last_in_the_day_of_month_is_the_last_day_of_each_month(expr: str, now: str, expected: str) -> None:
    assert first_fire("cron", {"expr": expr}, now=at(now)) == at(expected)


def test_cron_catch_up_walks_from_one_last_day_to_the_next() -> None:
    claimed = schedule("cron", {"expr": "0 0 last * *"}, period="2027-01-31T00:00Z", policy="catch_up")
    assert next_fire(claimed, at("2027-06-01T00:00Z")) == at("2027-02-28T00:00Z")


DAY_OF_WEEK_NUMBERINGS = [
    # Wednesday 20 May 2026: the next Saturday is the 23rd, Sunday the 24th, Monday the 25th.
    pytest.param("0 9 * * 0", "cron", "2026-05-20T00:00Z", "2026-05-24T09:00Z", id="cron:0-is-sunday"),
    pytest.param("0 9 * * 0", "apscheduler", "2026-05-20T00:00Z", "2026-05-25T09:00Z", id="aps:0-is-monday"),
    pytest.param("0 9 * * 6", "cron", "2026-05-20T00:00Z", "2026-05-23T09:00Z", id="cron:6-is-saturday"),
    pytest.param("0 9 * * 6", "apscheduler", "2026-05-20T00:00Z", "2026-05-24T09:00Z", id="aps:6-is-sunday"),
    pytest.param("0 9 * * SUN", "apscheduler", "2026-05-20T00:00Z", "2026-05-24T09:00Z", id="aps:names-as-in-cron"),
    pytest.param("0 9 * * sat-sun", "apscheduler", "2026-05-20T00:00Z", "2026-05-23T09:00Z", id="aps:range-of-names"),
    pytest.param("0 9 * * 4-6", "apscheduler", "2026-05-20T10:00Z", "2026-05-22T09:00Z", id="aps:4-is-friday"),
    # */2: Sunday, Tuesday, Thursday, Saturday in cron; Monday, Wednesday, Friday, Sunday in APScheduler.
    pytest.param("0 9 * * */2", "cron", "2026-05-20T10:00Z", "2026-05-21T09:00Z", id="cron:step-from-sunday"),
    pytest.param("0 9 * * */2", "apscheduler", "2026-05-20T10:00Z", "2026-05-22T09:00Z", id="aps:step-from-monday"),
    # Both day fields restricted: either matches in cron, both must in APScheduler (1 is Tuesday there).
    pytest.param("0 0 1 * 1", "cron", "2026-06-02T00:00Z", "2026-06-08T00:00Z", id="cron:a-monday"),
    pytest.param("0 0 1 * 1", "cron", "2026-06-30T00:00Z", "2026-07-01T00:00Z", id="cron:a-1st"),
    pytest.param("0 0 1 * 1", "apscheduler", "2026-06-02T00:00Z", "2026-09-01T00:00Z", id="aps:a-1st-on-a-tuesday"),
    # 31 July 2026 is the first last day of a month after 25 May that is a Friday.
    pytest.param("0 0 last * fri", "apscheduler", "2026-05-25T00:00Z", "2026-07-31T00:00Z", id="aps:last-and-friday"),
    # A day field starting with * matches every day in both readings.
    pytest.param("0 0 */2 * 0", "apscheduler", "2026-06-01T00:00Z", "2026-06-15T00:00Z", id="aps:odd-mondays"),
    # APScheduler read an item starting with a name as that name or range alone.
    pytest.param("0 9 * * mon-fri/2", "cron", "2026-05-20T10:00Z", "2026-05-22T09:00Z", id="cron:names-with-a-step"),
    pytest.param("0 9 * * mon-fri/2", "apscheduler", "2026-05-20T10:00Z", "2026-05-21T09:00Z", id="aps:step-ignored"),
    pytest.param("0 9 * * mon-5", "cron", "2026-05-20T10:00Z", "2026-05-21T09:00Z", id="cron:name-to-number"),
    pytest.param("0 9 * * mon-5", "apscheduler", "2026-05-20T10:00Z", "2026-05-25T09:00Z", id="aps:number-ignored"),
    pytest.param("0 0 1 jan/3 *", "cron", "2026-05-20T00:00Z", "2026-07-01T00:00Z", id="cron:month-name-step"),
    pytest.param("0 0 1 jan/3 *", "apscheduler", "2026-05-20T00:00Z", "2027-01-01T00:00Z", id="aps:january-only"),
]


@pytest.mark.parametrize(("expr", "numbering", "now", "expected"), DAY_OF_WEEK_NUMBERINGS)
def test_cron_reads_the_day_of_week_as_its_numbering_says(expr: str, numbering: str, now: str, expected: str) -> None:
    config = {"expr": expr, "day_of_week_numbering": numbering}
    assert first_fire("cron", config, now=at(now)) == at(expected)


def test_cron_with_apscheduler_numbering_refuses_days_that_never_fall_in_its_months() -> None:
    # Both day fields must match, so the weekday cannot rescue the 30th of February.
    config = {"expr": "0 0 30 2 1", "day_of_week_numbering": "apscheduler"}
    with pytest.raises(InvalidInputError, match="never matches") as caught:
        first_fire("cron", config, now=at("2026-01-01T00:00Z"))
    assert caught.value.field == "schedule_config.expr"


# --- random_within_window: seeded by the schedule and the local date ---

WINDOW_9_TO_10_LA = {"start_hour": 9, "end_hour": 10, "tz": "America/Los_Angeles"}


def test_random_window_fires_inside_its_local_window() -> None:
    # 17:00 PDT on 24 May: that day's window is over; 25 May's runs from 16:00Z to 17:00Z.
    fired = first_fire("random_within_window", WINDOW_9_TO_10_LA, now=at("2026-05-25T00:00Z"), schedule_id=SCHEDULE_ID)
    assert fired is not None
    assert at("2026-05-25T16:00Z") <= fired < at("2026-05-25T17:00Z")


def test_random_window_draws_the_same_instant_for_the_same_schedule_and_day() -> None:
    claimed_once = schedule("random_within_window", WINDOW_9_TO_10_LA, period="2026-05-24T16:30Z")
    claimed_again = schedule("random_within_window", WINDOW_9_TO_10_LA, period="2026-05-24T16:30Z")
    assert next_fire(claimed_once, at("2026-05-25T00:00Z")) == next_fire(claimed_again, at("2026-05-25T12:00Z"))


def test_random_window_draws_differ_between_schedules() -> None:
    now = at("2026-05-25T00:00Z")
    one = first_fire("random_within_window", WINDOW_9_TO_10_LA, now=now, schedule_id=SCHEDULE_ID)
    other = first_fire("random_within_window", WINDOW_9_TO_10_LA, now=now, schedule_id=OTHER_SCHEDULE_ID)
    assert one != other


def test_random_window_catch_up_walks_through_each_of_the_days_fires() -> None:
    config = {"start_hour": 9, "end_hour": 21, "fires_per_day": 3}
    claimed = schedule("random_within_window", config, period="2026-05-25T08:00Z", policy="catch_up")
    periods: list[datetime] = []
    for _ in range(4):
        following = next_fire(claimed, at("2026-05-27T00:00Z"))
        assert following is not None
        periods.append(following)
        claimed.next_fire_at = following
    assert periods == sorted(periods)
    assert len(set(periods)) == 4
    assert all(at("2026-05-25T09:00Z") <= period < at("2026-05-25T21:00Z") for period in periods[:3])
    assert at("2026-05-26T09:00Z") <= periods[3] < at("2026-05-26T21:00Z")


def test_random_window_spreads_its_fires_over_the_whole_window() -> None:
    config = {"start_hour": 0, "end_hour": 24}
    claimed = schedule("random_within_window", config, period="2026-01-01T00:00Z", policy="catch_up")
    quarters = [0, 0, 0, 0]
    for _ in range(2000):
        following = next_fire(claimed, at("2026-01-01T00:00Z"))
        assert following is not None
        quarters[following.hour // 6] += 1
        claimed.next_fire_at = following
    # 500 expected in each quarter of the day; one standard deviation is about 19.
    assert all(400 <= count <= 600 for count in quarters), quarters


def test_random_window_removed_by_spring_forward_fires_at_the_end_of_the_gap() -> None:
    config = {"start_hour": 2, "end_hour": 3, "tz": "America/Los_Angeles", "fires_per_day": 5}
    fired = first_fire("random_within_window", config, now=at("2026-03-08T00:00Z"), schedule_id=SCHEDULE_ID)
    assert fired == at("2026-03-08T10:00Z")
    following = next_fire(schedule("random_within_window", config, period="2026-03-08T10:00Z"), at("2026-03-08T10:00Z"))
    # 9 March: 02:00 to 03:00 PDT.
    assert following is not None
    assert at("2026-03-09T09:00Z") <= following < at("2026-03-09T10:00Z")


OVERNIGHT_BERLIN = {"start_hour": 22, "end_hour": 6, "tz": "Europe/Berlin", "fires_per_day": 4}


def periods_between(config: dict[str, Any], after: str, before: str) -> list[datetime]:
    """The periods after ``after`` and before ``before``, claimed one after the other (catch_up)."""
    claimed = schedule("random_within_window", config, period=after, policy="catch_up")
    periods: list[datetime] = []
    while (following := next_fire(claimed, at(before))) is not None and following < at(before):
        periods.append(following)
        claimed.next_fire_at = following
    return periods


def test_overnight_window_draws_fall_between_22_and_06_local() -> None:
    # CEST: 25 May's window runs from 20:00Z to 04:00Z on the 26th, 26 May's from 20:00Z to 04:00Z on the 27th.
    periods = periods_between(OVERNIGHT_BERLIN, "2026-05-25T12:00Z", "2026-05-27T12:00Z")
    assert len(periods) == 8
    assert all(at("2026-05-25T20:00Z") <= period < at("2026-05-26T04:00Z") for period in periods[:4])
    assert all(at("2026-05-26T20:00Z") <= period < at("2026-05-27T04:00Z") for period in periods[4:])


def test_overnight_window_after_midnight_is_still_the_window_that_started_the_day_before() -> None:
    config = {**OVERNIGHT_BERLIN, "fires_per_day": 40}
    drawn_from_the_evening = periods_between(config, "2026-05-25T12:00Z", "2026-05-26T12:00Z")
    after_midnight = at("2026-05-26T00:00Z")  # 02:00 CEST on 26 May
    fired = first_fire("random_within_window", config, now=after_midnight, schedule_id=SCHEDULE_ID)
    assert fired == min(period for period in drawn_from_the_evening if period > after_midnight)


OVERNIGHT_ACROSS_DST = [
    # 28 March 22:00 CET is 21:00Z; 29 March 06:00 CEST is 04:00Z: seven hours.
    pytest.param("2026-03-28", "2026-03-28T21:00Z", "2026-03-29T04:00Z", id="spring-forward"),
    # 24 October 22:00 CEST is 20:00Z; 25 October 06:00 CET is 05:00Z: nine hours.
    pytest.param("2026-10-24", "2026-10-24T20:00Z", "2026-10-25T05:00Z", id="fall-back"),
]


@pytest.mark.parametrize(("day", "start", "end"), OVERNIGHT_ACROSS_DST)
def test_overnight_window_across_a_dst_change_keeps_its_wall_clock_ends(day: str, start: str, end: str) -> None:
    config = {**OVERNIGHT_BERLIN, "fires_per_day": 200}
    # From noon of the day the window starts to noon of the next, between two windows.
    next_noon = (date.fromisoformat(day) + timedelta(days=1)).isoformat()
    periods = periods_between(config, f"{day}T12:00Z", f"{next_noon}T12:00Z")
    assert periods
    assert all(at(start) <= period < at(end) for period in periods)
    # Some of 200 draws land in the window's last hour: the whole window is drawn from.
    assert max(periods) >= at(end) - timedelta(hours=1)


def test_random_window_needs_the_schedule_id_for_a_first_fire() -> None:
    with pytest.raises(InvalidInputError) as caught:
        first_fire("random_within_window", WINDOW_9_TO_10_LA, now=at("2026-05-25T00:00Z"))
    assert caught.value.field == "schedule_id"


# --- refusals and the end of the calendar ---


class SunriseConfig(BaseModel):
    latitude: float


def test_an_application_registered_type_is_refused_with_a_hint() -> None:
    register_schedule_type("arithmetic_test_sunrise", SunriseConfig)
    claimed = schedule("arithmetic_test_sunrise", {"latitude": 52.5}, period="2026-05-25T14:00Z")
    with pytest.raises(InvalidInputError, match="next_fire of your own") as caught:
        next_fire(claimed, at("2026-05-25T14:00Z"))
    assert caught.value.field == "schedule_type"


def test_an_unknown_type_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="no reference arithmetic") as caught:
        first_fire("lunar_phase", {}, now=at("2026-05-25T14:00Z"))
    assert caught.value.field == "schedule_type"


def test_a_config_its_model_refuses_is_refused() -> None:
    with pytest.raises(InvalidInputError) as caught:
        first_fire("daily_at", {"hour": 25}, now=at("2026-05-25T14:00Z"))
    assert caught.value.field == "schedule_config.hour"


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(InvalidInputError) as caught:
        next_fire(schedule("interval", {"seconds": 60}, period="2026-05-25T14:00Z"), datetime(2026, 5, 25, 14))
    assert caught.value.field == "now"


def test_a_schedule_without_a_claimed_period_is_refused() -> None:
    unclaimed = schedule("interval", {"seconds": 60}, period="2026-05-25T14:00Z")
    unclaimed.next_fire_at = None
    with pytest.raises(InvalidInputError) as caught:
        next_fire(unclaimed, at("2026-05-25T14:00Z"))
    assert caught.value.field == "schedule.next_fire_at"


@pytest.mark.parametrize(
    ("schedule_type", "config", "now"),
    [
        ("interval", {"seconds": 7200}, "9999-12-31T23:00Z"),
        ("cron", {"expr": "59 23 31 12 *"}, "9999-12-31T23:59Z"),
        ("daily_at", {"hour": 9}, "9999-12-31T10:00Z"),
    ],
)
def test_a_period_past_year_9999_means_the_schedule_is_finished(
    schedule_type: str, config: dict[str, Any], now: str
) -> None:
    assert first_fire(schedule_type, config, now=at(now)) is None


# --- properties ---

ZONES = ["UTC", "America/Los_Angeles", "Europe/Berlin", "Australia/Lord_Howe", "America/Santiago", "Pacific/Apia"]
instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
delays = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10))


@st.composite
def random_windows(draw: st.DrawFn) -> dict[str, Any]:
    start = draw(st.integers(0, 23))
    return {
        "start_hour": start,
        # An end before the start is an overnight window.
        "end_hour": draw(st.integers(1, 24).filter(lambda end: end != start)),
        "tz": draw(st.sampled_from(ZONES)),
        "fires_per_day": draw(st.integers(1, 5)),
    }


repeating_schedules = st.one_of(
    st.tuples(st.just("interval"), st.builds(dict, seconds=st.integers(1, 10 * 86_400))),
    st.tuples(st.just("every_n_hours"), st.builds(dict, n=st.integers(1, 48))),
    st.tuples(
        st.just("daily_at"),
        st.builds(dict, hour=st.integers(0, 23), minute=st.integers(0, 59), tz=st.sampled_from(ZONES)),
    ),
    st.tuples(st.just("random_within_window"), random_windows()),
    st.tuples(st.just("cron"), st.builds(dict, expr=st.sampled_from(["*/7 * * * *", "0 3 * * 1", "0 0 29 2 *"]))),
)


@settings(max_examples=300, deadline=None)
@given(typed_config=repeating_schedules, period=instants, late=delays)
def test_catch_up_returns_an_instant_after_the_claimed_period(
    typed_config: tuple[str, dict[str, Any]], period: datetime, late: timedelta
) -> None:
    schedule_type, config = typed_config
    claimed = schedule(schedule_type, config, period=period.isoformat(), policy="catch_up")
    following = next_fire(claimed, period + late)
    assert following is not None
    assert following > period


@settings(max_examples=300, deadline=None)
@given(typed_config=repeating_schedules, period=instants, late=delays)
def test_coalesce_returns_an_instant_after_now(
    typed_config: tuple[str, dict[str, Any]], period: datetime, late: timedelta
) -> None:
    schedule_type, config = typed_config
    claimed = schedule(schedule_type, config, period=period.isoformat(), policy="coalesce")
    following = next_fire(claimed, period + late)
    assert following is not None
    assert following > period + late


MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
# (lowest, highest, names) of minute, hour, day of month and month.
CRON_FIELDS: list[tuple[int, int, tuple[str, ...]]] = [
    (0, 59, ()),
    (0, 23, ()),
    (1, 31, ()),
    (1, 12, MONTH_NAMES),
]
# The day of week, in each numbering: cron's 0 and 7 are Sunday, APScheduler's 0 is Monday.
DAY_OF_WEEK_FIELDS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "cron": (0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
    "apscheduler": (0, 6, ("mon", "tue", "wed", "thu", "fri", "sat", "sun")),
}


@st.composite
def cron_field(
    draw: st.DrawFn, lowest: int, highest: int, names: tuple[str, ...], numbering: str = "cron"
) -> tuple[str, set[int]]:
    """The text of one field and, worked out independently, the values it stands for."""

    def spelled(value: int) -> str:
        if value - lowest < len(names) and draw(st.booleans()):
            return names[value - lowest]
        return str(value)

    texts: list[str] = []
    values: set[int] = set()
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["*", "*", "*/s", "a", "a-b", "a-b/s", "a/s"]))
        first = draw(st.integers(lowest, highest))
        last = draw(st.integers(first, highest))
        step = draw(st.integers(1, highest))
        start, end = spelled(first), spelled(last)
        if kind == "*":
            text, stands_for = "*", range(lowest, highest + 1)
        elif kind == "*/s":
            text, stands_for = f"*/{step}", range(lowest, highest + 1, step)
        elif kind == "a":
            text, stands_for = start, range(first, first + 1)
        elif kind == "a-b":
            text, stands_for = f"{start}-{end}", range(first, last + 1)
        elif kind == "a-b/s":
            text, stands_for = f"{start}-{end}/{step}", range(first, last + 1, step)
        else:
            text, stands_for = f"{start}/{step}", range(first, highest + 1, step)
        if numbering == "apscheduler" and start.isalpha() and not kind.startswith("*"):
            # APScheduler 3 read the name, or range of names, an item starts with, and nothing after it.
            stands_for = range(first, last + 1) if kind.startswith("a-b") and end.isalpha() else range(first, first + 1)
        texts.append(text)
        values.update(stands_for)
    return ",".join(texts), values


@dataclass(frozen=True)
class CronOracle:
    """A slow matcher of one expression, written from the cron rules, not from the module."""

    minutes: set[int]
    hours: set[int]
    days: set[int]
    last_day: bool
    months: set[int]
    weekdays: set[int]  # as numbered in the expression
    numbering: str
    either_day: bool

    def day_matches(self, day: date) -> bool:
        is_last = (day + timedelta(days=1)).day == 1
        by_day = day.day in self.days or (self.last_day and is_last)
        # isoweekday(): Monday 1 to Sunday 7; weekday(): Monday 0 to Sunday 6.
        weekday = day.isoweekday() % 7 if self.numbering == "cron" else day.weekday()
        by_weekday = weekday in self.weekdays
        return day.month in self.months and ((by_day or by_weekday) if self.either_day else (by_day and by_weekday))

    def matches(self, moment: datetime) -> bool:
        return moment.minute in self.minutes and moment.hour in self.hours and self.day_matches(moment.date())


@st.composite
def cron_expressions(draw: st.DrawFn, numbering: str) -> tuple[str, CronOracle]:
    fields = [
        draw(cron_field(lowest, highest, names, numbering))
        for lowest, highest, names in [*CRON_FIELDS, DAY_OF_WEEK_FIELDS[numbering]]
    ]
    last_day = draw(st.booleans())
    if last_day:
        fields[2] = (fields[2][0] + draw(st.sampled_from([",last", ",LAST"])), fields[2][1])
    (_, minutes), (_, hours), (day_text, days), (_, months), (weekday_text, weekdays) = fields
    oracle = CronOracle(
        minutes,
        hours,
        days,
        last_day,
        months,
        weekdays={weekday % 7 for weekday in weekdays} if numbering == "cron" else weekdays,
        numbering=numbering,
        # Either day field is enough only in cron, and only when neither starts with *.
        either_day=numbering == "cron" and not day_text.startswith("*") and not weekday_text.startswith("*"),
    )
    return " ".join(text for text, _ in fields), oracle


MINUTE = timedelta(minutes=1)
# How far the brute-force oracle looks: two days, minute by minute.
ORACLE_MINUTES = 2 * 24 * 60


@pytest.mark.parametrize("numbering", ["cron", "apscheduler"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), now=instants)
def test_cron_returns_the_first_matching_minute_after_now(numbering: str, data: st.DataObject, now: datetime) -> None:
    expr, oracle = data.draw(cron_expressions(numbering))
    try:
        # Standard cron as stored rows carry it: without the key.
        config = {"expr": expr} if numbering == "cron" else {"expr": expr, "day_of_week_numbering": numbering}
        found = first_fire("cron", config, now=now)
    except InvalidInputError:
        # Refused as never matching: no day of a whole 400-year calendar cycle matches.
        assert not any(oracle.day_matches(date(2000, 1, 1) + timedelta(days=n)) for n in range(146_097))
        return
    assert found is not None
    assert (found.second, found.microsecond) == (0, 0)
    assert found > now
    assert oracle.matches(found)
    minute = now.replace(second=0, microsecond=0) + MINUTE
    for _ in range(ORACLE_MINUTES):
        if minute >= found:
            break
        assert not oracle.matches(minute), f"{expr!r} matches {minute} before {found}"
        minute += MINUTE


# --- on a real database ---


@pytest.mark.parametrize(
    ("policy", "following"), [("coalesce", "2026-05-25T14:00Z"), ("catch_up", "2026-05-25T11:00Z")]
)
async def test_claim_due_reschedules_with_the_reference_next_fire(
    wake_factory: WakeFactory, wake_session: AsyncSession, policy: MissedFirePolicy, following: str
) -> None:
    hourly = await wake_factory.schedule(
        schedule_type="cron",
        schedule_config={"expr": "0 * * * *"},
        next_fire_at=at("2026-05-25T10:00Z"),
        missed_fire_policy=policy,
    )
    (claim,) = await WakeScheduleRepository(wake_session).claim_due(
        at("2026-05-25T13:20Z"), limit=10, next_fire=next_fire
    )
    assert claim.schedule_id == hourly.schedule_id
    assert (claim.scheduled_fire_at, claim.next_fire_at, claim.schedule_status) == (
        at("2026-05-25T10:00Z"),
        at(following),
        "active",
    )
