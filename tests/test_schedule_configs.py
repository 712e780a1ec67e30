"""validate_schedule_config: one model per schedule type, errors naming the field."""

import pytest
from pydantic import BaseModel

from agent_wake import InvalidInputError, register_schedule_type, validate_schedule_config

VALID = [
    ("daily_at", {"hour": 14, "minute": 0, "tz": "America/Los_Angeles"}),
    ("every_n_hours", {"n": 3}),
    (
        "random_within_window",
        {"start_hour": 9, "end_hour": 21, "tz": "America/Los_Angeles", "fires_per_day": 1},
    ),
    ("one_shot_at", {"fire_at_iso": "2026-05-25T14:00:00+00:00"}),
    ("cron", {"expr": "0 */3 * * *"}),
    ("cron", {"expr": "30 9 * jan-mar mon-fri"}),
    ("cron", {"expr": "0,15,30,45 8-18/2 1 * 0"}),
    ("relative_delay", {"delay": "30m"}),
    ("interval", {"seconds": 1800}),
]


@pytest.mark.parametrize(("schedule_type", "config"), VALID)
def test_reference_configs_are_accepted_unchanged(schedule_type: str, config: dict[str, object]) -> None:
    assert validate_schedule_config(schedule_type, config) == config


INVALID = [
    ("daily_at", {"hour": 24, "minute": 0, "tz": "UTC"}, "schedule_config.hour"),
    ("daily_at", {"hour": 9, "minute": 60, "tz": "UTC"}, "schedule_config.minute"),
    ("daily_at", {"hour": 9, "tz": "Mars/Olympus_Mons"}, "schedule_config.tz"),
    ("daily_at", {"hour": 9, "tz": "../../etc/passwd"}, "schedule_config.tz"),
    ("daily_at", {"hour": 9, "colour": "blue"}, "schedule_config.colour"),
    ("every_n_hours", {"n": 0}, "schedule_config.n"),
    ("random_within_window", {"start_hour": 21, "end_hour": 9}, "schedule_config"),
    (
        "random_within_window",
        {"start_hour": 9, "end_hour": 21, "fires_per_day": 0},
        "schedule_config.fires_per_day",
    ),
    ("one_shot_at", {"fire_at_iso": "2026-05-25T14:00:00"}, "schedule_config.fire_at_iso"),
    ("one_shot_at", {"fire_at_iso": "tomorrow"}, "schedule_config.fire_at_iso"),
    ("cron", {"expr": "0 */3 * *"}, "schedule_config.expr"),
    ("cron", {"expr": "0 25 * * *"}, "schedule_config.expr"),
    ("cron", {"expr": "*/0 * * * *"}, "schedule_config.expr"),
    ("cron", {"expr": "0 9 * * fri-mon"}, "schedule_config.expr"),
    ("relative_delay", {"delay": "0m"}, "schedule_config.delay"),
    ("relative_delay", {"delay": "30 minutes"}, "schedule_config.delay"),
    ("interval", {"seconds": -5}, "schedule_config.seconds"),
    ("interval", {}, "schedule_config.seconds"),
    ("interval", [1800], "schedule_config"),
    ("interval", {"seconds": 10**30}, "schedule_config.seconds"),
    ("interval", {"seconds": True}, "schedule_config.seconds"),
    ("daily_at", {"hour": "14"}, "schedule_config.hour"),
    ("daily_at", {"hour": True}, "schedule_config.hour"),
    ("every_n_hours", {"n": 2.0}, "schedule_config.n"),
    ("relative_delay", {"delay": "9999999999999999999d"}, "schedule_config.delay"),
    ("relative_delay", {"delay": "4000d"}, "schedule_config.delay"),
    ("cron", {"expr": "\u0663 * * * *"}, "schedule_config.expr"),
]


@pytest.mark.parametrize(("schedule_type", "config", "field"), INVALID)
def test_bad_configs_are_refused_naming_the_field(schedule_type: str, config: object, field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_schedule_config(schedule_type, config)
    assert caught.value.field == field


def test_unknown_type_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(InvalidInputError, match="register_schedule_type") as caught:
        validate_schedule_config("lunar_phase", {})
    assert caught.value.field == "schedule_type"


class SunsetConfig(BaseModel):
    offset_minutes: int


class NoteConfig(BaseModel):
    note: str


def test_a_registered_type_cannot_store_text_jsonb_refuses() -> None:
    register_schedule_type("test_note", NoteConfig)
    assert validate_schedule_config("test_note", {"note": "ok"}) == {"note": "ok"}
    for bad in ("nul\x00here", "lone\ud800surrogate"):
        with pytest.raises(InvalidInputError) as caught:
            validate_schedule_config("test_note", {"note": bad})
        assert caught.value.field == "schedule_config"
        assert bad not in str(caught.value)


def test_an_application_can_register_its_own_type() -> None:
    register_schedule_type("test_sunset", SunsetConfig)
    assert validate_schedule_config("test_sunset", {"offset_minutes": -10}) == {"offset_minutes": -10}
    with pytest.raises(InvalidInputError, match="already registered"):
        register_schedule_type("test_sunset", SunsetConfig)
    with pytest.raises(InvalidInputError) as caught:
        register_schedule_type("Not A Slug", SunsetConfig)
    assert caught.value.field == "schedule_type"
