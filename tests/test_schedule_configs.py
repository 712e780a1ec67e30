"""validate_schedule_config: one model per schedule type, errors naming the field."""

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, JsonValue, field_validator, model_validator
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from agent_wake import InvalidInputError, WakeScheduleRepository, register_schedule_type, validate_schedule_config
from agent_wake.schedule_configs import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, MAX_SCHEDULE_SECONDS

VALID = [
    ("daily_at", {"hour": 14, "minute": 0, "tz": "America/Los_Angeles"}),
    ("every_n_hours", {"n": 3}),
    (
        "random_within_window",
        {"start_hour": 9, "end_hour": 21, "tz": "America/Los_Angeles", "fires_per_day": 1},
    ),
    ("random_within_window", {"start_hour": 0, "end_hour": 24, "tz": "UTC", "fires_per_day": 3}),
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
    ("daily_at", {"hours": 9}, "schedule_config.hour"),
    ("every_n_hours", {"n": 0}, "schedule_config.n"),
    ("random_within_window", {"start_hour": 21, "end_hour": 21}, "schedule_config"),
    (
        "random_within_window",
        {"start_hour": 9, "end_hour": 21, "fires_per_day": 0},
        "schedule_config.fires_per_day",
    ),
    ("one_shot_at", {"fire_at_iso": "2026-05-25"}, "schedule_config.fire_at_iso"),
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


# Configs the older implementation stored, every key present (with the key revision
# agent_wake_0008 adds to its cron rows): each must be saved again unchanged.
STORED_BY_THE_OLDER_IMPLEMENTATION = [
    pytest.param(
        "random_within_window",
        {"start_hour": 22, "end_hour": 6, "tz": "Europe/Berlin", "fires_per_day": 2},
        id="overnight-window",
    ),
    pytest.param("one_shot_at", {"fire_at_iso": "2026-05-25T14:00:00"}, id="one-shot-without-offset"),
    pytest.param("one_shot_at", {"fire_at_iso": "2026-05-25 14:00:00"}, id="one-shot-without-offset-space"),
    pytest.param(
        "daily_at",
        {"hour": 14, "minute": 0, "tz": "UTC", "label": "morning", "jitter": 30},
        id="extra-keys",
    ),
    pytest.param("interval", {"seconds": 60, "meta": {"source": ["import", None, 1.5, True]}}, id="extra-nested-key"),
    pytest.param("relative_delay", {"delay": "30M"}, id="delay-upper-case-unit"),
    pytest.param("relative_delay", {"delay": "05m"}, id="delay-leading-zero"),
    pytest.param("relative_delay", {"delay": "+5m"}, id="delay-leading-plus"),
    pytest.param("relative_delay", {"delay": "+0003660D"}, id="delay-all-three-at-the-bound"),
    pytest.param("cron", {"expr": "0 0 last * *"}, id="cron-last"),
    pytest.param("cron", {"expr": "0 0 LAST * *"}, id="cron-last-any-case"),
    pytest.param("cron", {"expr": "0 0 15,last * *"}, id="cron-last-in-a-list"),
    pytest.param("cron", {"expr": "0 9 * * 0", "day_of_week_numbering": "apscheduler"}, id="cron-apscheduler"),
    pytest.param("cron", {"expr": "0 9 * * mon-sun", "day_of_week_numbering": "apscheduler"}, id="cron-aps-names"),
    pytest.param("cron", {"expr": "0 9 * * */6", "day_of_week_numbering": "apscheduler"}, id="cron-aps-step-6"),
    pytest.param(
        "cron", {"expr": "0 9 * jan/3 mon-fri/2", "day_of_week_numbering": "apscheduler"}, id="cron-aps-name-then-more"
    ),
    pytest.param("cron", {"expr": "0 9 * * 7", "day_of_week_numbering": "cron"}, id="cron-numbering-given"),
]


@pytest.mark.parametrize(("schedule_type", "stored"), STORED_BY_THE_OLDER_IMPLEMENTATION)
def test_configs_stored_by_the_older_implementation_round_trip_unchanged(
    schedule_type: str, stored: dict[str, object]
) -> None:
    assert validate_schedule_config(schedule_type, stored) == stored


def test_a_cron_config_without_day_of_week_numbering_is_returned_without_it() -> None:
    assert validate_schedule_config("cron", {"expr": "0 9 * * 1"}) == {"expr": "0 9 * * 1"}


def test_unknown_keys_are_kept_beside_the_defaults() -> None:
    assert validate_schedule_config("daily_at", {"hour": 9, "label": "morning"}) == {
        "hour": 9,
        "minute": 0,
        "tz": "UTC",
        "label": "morning",
    }


def test_a_misspelt_optional_key_is_kept_and_the_default_applies() -> None:
    assert validate_schedule_config("daily_at", {"hour": 9, "minutes": 30}) == {
        "hour": 9,
        "minute": 0,
        "tz": "UTC",
        "minutes": 30,
    }


def test_known_keys_keep_their_strict_types_beside_unknown_keys() -> None:
    error = refusal("daily_at", {"hour": 14, "minute": "0", "label": "morning"})
    assert error.field == "schedule_config.minute"


@pytest.mark.parametrize("value", [(1, 2), datetime(2026, 5, 25, tzinfo=UTC), b"bytes"], ids=["tuple", "date", "bytes"])
def test_an_unknown_key_whose_value_is_not_json_is_refused(value: object) -> None:
    error = refusal("daily_at", {"hour": 9, "label": value})
    assert error.field == "schedule_config.label"
    assert "JSON" in error.rule


def test_an_unknown_key_holding_nan_is_refused_not_stored_as_null() -> None:
    error = refusal("daily_at", {"hour": 9, "jitter": float("nan")})
    assert error.field == "schedule_config"
    assert "cannot be written as JSON" in error.rule


@pytest.mark.parametrize("hour", [1, 9, 23])
def test_a_window_may_not_start_and_end_at_the_same_hour(hour: int) -> None:
    error = refusal("random_within_window", {"start_hour": hour, "end_hour": hour})
    assert error.field == "schedule_config"
    assert "end_hour must differ from start_hour" in error.rule


@pytest.mark.parametrize("delay", ["0m", "+0s", "000h", "-5m", "", "+", "5w", "5 m", "++5m", "5mm", "5\u017f"])
def test_a_relative_delay_that_is_not_a_positive_number_and_unit_is_refused(delay: str) -> None:
    error = refusal("relative_delay", {"delay": delay})
    assert error.field == "schedule_config.delay"
    assert "positive whole number followed by s, m, h or d" in error.rule


def test_a_relative_delay_past_ten_years_is_refused_however_it_is_spelt() -> None:
    error = refusal("relative_delay", {"delay": "+0003661D"})
    assert error.field == "schedule_config.delay"
    assert "at most 3660 days" in error.rule


@pytest.mark.parametrize(
    ("expr", "field"),
    [
        ("last * * * *", "minute"),
        ("0 last * * *", "hour"),
        ("0 0 * last *", "month"),
        ("0 0 * * last", "day of week"),
        ("0 0 1-last * *", "day of month"),
        ("0 0 last-31 * *", "day of month"),
        ("0 0 last/2 * *", "day of month"),
        ("0 0 */Last * *", "day of month"),
    ],
)
def test_last_is_refused_outside_the_day_of_month_field_and_in_ranges_or_steps(expr: str, field: str) -> None:
    error = refusal("cron", {"expr": expr})
    assert error.field == "schedule_config.expr"
    assert f"{field}: 'last' (the last day of the month) must be an item of its own in the day-of-month field" in (
        error.rule
    )


@pytest.mark.parametrize(
    ("expr", "rule"),
    [
        ("0 9 * * 7", "day of week: '7' must be a number from 0 to 6 or a name (mon-sun)"),
        ("0 9 * * 5-7", "day of week: '7' must be a number from 0 to 6 or a name (mon-sun)"),
        ("0 9 * * */7", "day of week: step '7' must be a whole number from 1 to 6"),
    ],
)
def test_apscheduler_numbering_refuses_day_of_week_7(expr: str, rule: str) -> None:
    error = refusal("cron", {"expr": expr, "day_of_week_numbering": "apscheduler"})
    assert error.field == "schedule_config.expr"
    assert rule in error.rule


def test_apscheduler_numbering_names_weekdays_from_monday_so_sun_sat_runs_backwards() -> None:
    error = refusal("cron", {"expr": "0 9 * * sun-sat", "day_of_week_numbering": "apscheduler"})
    assert error.field == "schedule_config.expr"
    assert "runs backwards" in error.rule


@pytest.mark.parametrize("numbering", ["Cron", "vixie", "", None, 0])
def test_an_unknown_day_of_week_numbering_is_refused(numbering: object) -> None:
    error = refusal("cron", {"expr": "0 9 * * 1", "day_of_week_numbering": numbering})
    assert error.field == "schedule_config.day_of_week_numbering"
    assert "'cron' or 'apscheduler'" in error.rule


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


# Bounds on the config as a whole, whatever its model.


class TreeConfig(BaseModel):
    tree: JsonValue


class BlobConfig(BaseModel):
    blob: bytes


class AnythingConfig(BaseModel):
    value: Any


class RecordedConfig(BaseModel):
    """Remembers each config handed to it, to show what never reached pydantic."""

    seen: ClassVar[list[object]] = []
    tree: JsonValue = None

    @model_validator(mode="before")
    @classmethod
    def _remember(cls, value: object) -> object:
        cls.seen.append(value)
        return value


class ClosedConfig(BaseModel):
    """An application's model that refuses keys it does not know."""

    model_config = ConfigDict(extra="forbid")
    note: str = ""


class EchoingConfig(BaseModel):
    word: str

    @field_validator("word")
    @classmethod
    def _refuse_with_the_whole_value(cls, value: str) -> str:
        raise ValueError(f"{value} is not a word")


@pytest.fixture(scope="module")
def registered() -> None:
    models: list[tuple[str, type[BaseModel]]] = [
        ("test_tree", TreeConfig),
        ("test_blob", BlobConfig),
        ("test_anything", AnythingConfig),
        ("test_recorded", RecordedConfig),
        ("test_echoing", EchoingConfig),
        ("test_closed", ClosedConfig),
    ]
    for schedule_type, model in models:
        register_schedule_type(schedule_type, model)


def nested(levels: int, wrap: Callable[[object], object]) -> object:
    value: object = 0
    for _ in range(levels):
        value = wrap(value)
    return value


def in_a_dict(value: object) -> object:
    return {"a": value}


def in_a_list(value: object) -> object:
    return [value]


def refusal(schedule_type: object, config: object) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as caught:
        validate_schedule_config(schedule_type, config)  # type: ignore[arg-type]
    return caught.value


# The config itself is the first level, so its value may hold one level fewer.
@pytest.mark.parametrize("wrap", [in_a_dict, in_a_list])
def test_a_config_nested_as_deep_as_the_bound_is_accepted(registered: None, wrap: Callable[[object], object]) -> None:
    config = {"tree": nested(MAX_CONFIG_DEPTH - 1, wrap)}
    assert validate_schedule_config("test_tree", config) == config


@pytest.mark.parametrize("levels", [MAX_CONFIG_DEPTH, 5_000])
@pytest.mark.parametrize("wrap", [in_a_dict, in_a_list])
def test_a_config_nested_deeper_than_the_bound_is_refused(
    registered: None, wrap: Callable[[object], object], levels: int
) -> None:
    error = refusal("test_tree", {"tree": nested(levels, wrap)})
    assert type(error) is InvalidInputError
    assert error.field == "schedule_config"
    assert f"at most {MAX_CONFIG_DEPTH} levels" in error.rule


def test_a_deep_config_is_refused_before_its_model_sees_it(registered: None) -> None:
    RecordedConfig.seen.clear()
    validate_schedule_config("test_recorded", {"tree": nested(3, in_a_list)})
    assert len(RecordedConfig.seen) == 1
    refusal("test_recorded", {"tree": nested(5_000, in_a_dict)})
    assert len(RecordedConfig.seen) == 1


def test_a_config_that_contains_itself_is_refused_as_too_deep(registered: None) -> None:
    loop: dict[str, object] = {}
    loop["tree"] = loop
    assert refusal("test_tree", loop).field == "schedule_config"


def test_bytes_that_are_not_utf8_are_refused_without_chaining_the_decode_error(registered: None) -> None:
    error = refusal("test_blob", {"blob": b"\xff\xfe not text"})
    assert error.field == "schedule_config"
    assert "cannot be written as JSON" in error.rule
    assert error.__cause__ is None
    assert error.__context__ is None


@pytest.mark.parametrize("value", [object(), 10**5_000, b"\xff"], ids=["object", "10**5000", "bytes"])
def test_a_value_json_cannot_carry_is_refused(registered: None, value: object) -> None:
    error = refusal("test_anything", {"value": value})
    assert error.field == "schedule_config"
    assert len(str(error)) < 200


def note_of_json_size(size: int) -> dict[str, str]:
    """A config whose compact UTF-8 JSON, {"tree":"xx..."}, is ``size`` bytes."""
    return {"tree": "x" * (size - len('{"tree":""}'))}


def test_a_config_of_exactly_the_size_bound_is_accepted(registered: None) -> None:
    config = note_of_json_size(MAX_CONFIG_BYTES)
    assert validate_schedule_config("test_tree", config) == config


def test_a_config_one_byte_over_the_size_bound_is_refused(registered: None) -> None:
    error = refusal("test_tree", note_of_json_size(MAX_CONFIG_BYTES + 1))
    assert error.field == "schedule_config"
    assert f"at most {MAX_CONFIG_BYTES} bytes" in error.rule


def test_the_size_bound_counts_utf8_bytes_not_characters(registered: None) -> None:
    two_byte_characters = {"tree": "é" * (MAX_CONFIG_BYTES // 2)}
    assert refusal("test_tree", two_byte_characters).field == "schedule_config"


def test_a_config_of_fifty_million_characters_is_refused_with_a_short_message() -> None:
    error = refusal("cron", {"expr": "*" * 50_000_000})
    assert error.field == "schedule_config"
    assert len(str(error)) < 200


def test_a_config_with_more_values_than_fit_is_refused_before_its_model_sees_it(registered: None) -> None:
    RecordedConfig.seen.clear()
    refusal("test_recorded", {"tree": [0] * MAX_CONFIG_BYTES})
    assert RecordedConfig.seen == []


# Messages show a caller's value as a repr of at most about 40 characters.


def test_an_unknown_time_zone_is_shown_cut_short() -> None:
    error = refusal("daily_at", {"hour": 9, "tz": "Z" * 60_000})
    assert error.field == "schedule_config.tz"
    assert "Z" * 41 not in str(error)
    assert len(str(error)) < 200


def test_a_time_zone_of_a_million_characters_is_refused_with_a_short_message() -> None:
    error = refusal("daily_at", {"hour": 9, "tz": "Z" * 1_000_000})
    assert len(str(error)) < 200


def test_an_unknown_schedule_type_is_shown_cut_short() -> None:
    error = refusal("y" * 1_000_000, {})
    assert error.field == "schedule_type"
    assert "y" * 41 not in str(error)
    assert len(str(error)) < 400


def test_a_schedule_type_that_is_not_a_string_is_refused() -> None:
    assert refusal(["cron"], {"expr": "* * * * *"}).field == "schedule_type"


def test_an_unknown_key_an_applications_model_refuses_is_named_cut_short(registered: None) -> None:
    error = refusal("test_closed", {"k" * 10_000: 1})
    assert error.field.startswith("schedule_config.'kkk")
    assert len(str(error)) < 200


def test_a_long_cron_token_is_shown_cut_short() -> None:
    error = refusal("cron", {"expr": "x" * 10_000 + " * * * *"})
    assert error.field == "schedule_config.expr"
    assert len(str(error)) < 200


def test_a_registered_models_own_message_is_cut_short(registered: None) -> None:
    error = refusal("test_echoing", {"word": "w" * 10_000})
    assert error.field == "schedule_config.word"
    assert len(str(error)) < 300


def test_registering_something_other_than_a_pydantic_model_is_refused() -> None:
    with pytest.raises(InvalidInputError) as caught:
        register_schedule_type("test_not_a_model", dict)  # type: ignore[arg-type]
    assert caught.value.field == "model"


# Each model accepts exactly what its messages say.


@pytest.mark.parametrize("step", ["\u0663", "\u00b2", "\uff13"], ids=["arabic-indic", "superscript", "fullwidth"])
def test_a_cron_step_of_non_ascii_digits_is_refused(step: str) -> None:
    error = refusal("cron", {"expr": f"*/{step} * * * *"})
    assert error.field == "schedule_config.expr"
    assert "step" in error.rule


@pytest.mark.parametrize("expr", ["*/60 * * * *", "0 */24 * * *", "0 0 */32 * *", "0 0 * */13 *", "0 0 * * */8"])
def test_a_cron_step_past_its_fields_largest_value_is_refused(expr: str) -> None:
    error = refusal("cron", {"expr": expr})
    assert error.field == "schedule_config.expr"
    assert "step" in error.rule


def test_cron_steps_up_to_each_fields_largest_value_are_accepted() -> None:
    config = {"expr": "*/59 */23 */31 */12 */7"}
    assert validate_schedule_config("cron", config) == config


def test_a_cron_slash_without_a_step_is_refused() -> None:
    assert refusal("cron", {"expr": "*/ * * * *"}).field == "schedule_config.expr"


def test_cron_numbers_may_carry_leading_zeros() -> None:
    config = {"expr": "005 09 * * *"}
    assert validate_schedule_config("cron", config) == config


@pytest.mark.parametrize("delay", ["30m\n", "30m\r\n"])
def test_a_relative_delay_with_a_trailing_newline_is_refused(delay: str) -> None:
    assert refusal("relative_delay", {"delay": delay}).field == "schedule_config.delay"


def test_a_relative_delay_is_refused_past_the_number_of_days_its_message_names() -> None:
    days = MAX_SCHEDULE_SECONDS // 86_400
    assert validate_schedule_config("relative_delay", {"delay": f"{days}d"}) == {"delay": f"{days}d"}
    error = refusal("relative_delay", {"delay": f"{days + 1}d"})
    assert f"at most {days} days" in error.rule


@pytest.mark.parametrize("fire_at_iso", ["9999-12-31T23:00:00-14:00", "0001-01-01T00:00:00+14:00"])
def test_a_one_shot_at_that_overflows_once_in_utc_is_refused(fire_at_iso: str) -> None:
    error = refusal("one_shot_at", {"fire_at_iso": fire_at_iso})
    assert error.field == "schedule_config.fire_at_iso"
    assert "once converted to UTC" in error.rule


@pytest.mark.parametrize("fire_at_iso", ["9999-12-31T09:59:59-14:00", "0001-01-01T13:00:00+13:00"])
def test_a_one_shot_at_that_fits_once_in_utc_is_accepted(fire_at_iso: str) -> None:
    assert validate_schedule_config("one_shot_at", {"fire_at_iso": fire_at_iso}) == {"fire_at_iso": fire_at_iso}


@pytest.mark.parametrize(
    "fire_at_iso", ["2026-05-25\u00e914:00:00+00:00", "2026-05-25\n14:00:00+00:00", "2026-05-25x14:00:00+00:00"]
)
def test_a_one_shot_at_with_something_other_than_t_between_date_and_time_is_refused(fire_at_iso: str) -> None:
    error = refusal("one_shot_at", {"fire_at_iso": fire_at_iso})
    assert error.field == "schedule_config.fire_at_iso"
    assert "ISO 8601" in error.rule


def test_a_one_shot_at_may_separate_date_and_time_with_a_space_as_str_of_a_datetime_does() -> None:
    config = {"fire_at_iso": str(datetime(2026, 5, 25, 14, tzinfo=UTC))}
    assert validate_schedule_config("one_shot_at", config) == config


def test_text_holding_a_backslash_then_u0000_is_not_taken_for_a_nul(registered: None) -> None:
    config = {"tree": "C:\\u0000 and \\\\u0000"}
    assert validate_schedule_config("test_tree", config) == config


# Through the repository: refused, and nothing reaches the database.


async def refused_by_the_repository(
    wake_engine: AsyncEngine, schedule_type: str, config: Mapping[str, object]
) -> tuple[InvalidInputError, int]:
    """The error ``create`` raises, and how many schedules a new connection then finds."""
    conversation_id = uuid.uuid4()
    async with AsyncSession(wake_engine) as session:
        with pytest.raises(InvalidInputError) as caught:
            await WakeScheduleRepository(session).create(
                conversation_id=conversation_id,
                user_id=uuid.uuid4(),
                agent_id=uuid.uuid4(),
                schedule_type=schedule_type,
                schedule_config=config,
                next_fire_at=None,
            )
        await session.commit()
    return caught.value, await stored_schedules(wake_engine, conversation_id)


async def stored_schedules(wake_engine: AsyncEngine, conversation_id: uuid.UUID) -> int:
    async with wake_engine.connect() as connection:
        result = await connection.execute(
            text("SELECT count(*) FROM agent_wake_schedules WHERE conversation_id = :c"), {"c": conversation_id}
        )
        return int(result.scalar_one())


async def test_the_repository_stores_a_config_just_within_the_size_and_depth_bounds(
    wake_engine: AsyncEngine, registered: None
) -> None:
    conversation_id = uuid.uuid4()
    config = {"tree": [nested(MAX_CONFIG_DEPTH - 2, in_a_list), "x" * (MAX_CONFIG_BYTES - 1_000)]}
    async with AsyncSession(wake_engine) as session:
        await WakeScheduleRepository(session).create(
            conversation_id=conversation_id,
            user_id=uuid.uuid4(),
            agent_id=uuid.uuid4(),
            schedule_type="test_tree",
            schedule_config=config,
            next_fire_at=None,
        )
        await session.commit()
    assert await stored_schedules(wake_engine, conversation_id) == 1


async def test_the_repository_stores_nothing_for_a_config_over_the_size_bound(
    wake_engine: AsyncEngine, registered: None
) -> None:
    error, stored = await refused_by_the_repository(wake_engine, "test_tree", note_of_json_size(MAX_CONFIG_BYTES + 1))
    assert (type(error), error.field, stored) == (InvalidInputError, "schedule_config", 0)


async def test_the_repository_stores_nothing_for_a_config_over_the_depth_bound(
    wake_engine: AsyncEngine, registered: None
) -> None:
    error, stored = await refused_by_the_repository(wake_engine, "test_tree", {"tree": nested(5_000, in_a_dict)})
    assert (type(error), error.field, stored) == (InvalidInputError, "schedule_config", 0)


async def test_the_repository_stores_nothing_for_a_one_shot_at_that_overflows_in_utc(wake_engine: AsyncEngine) -> None:
    config = {"fire_at_iso": "9999-12-31T23:00:00-14:00"}
    error, stored = await refused_by_the_repository(wake_engine, "one_shot_at", config)
    assert (type(error), error.field, stored) == (InvalidInputError, "schedule_config.fire_at_iso", 0)
