"""Argument checks shared by the repositories.

Each returns the value it accepts (normalized where that helps) and raises
:class:`InvalidInputError` naming the field and the rule. None of them puts
the rejected value in the message, so they are safe on secrets too.
"""

import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final, TypeVar

from agent_wake.errors import InvalidInputError

_Choice = TypeVar("_Choice", bound=str)

MAX_LIST_LIMIT: Final = 10_000
# How much of a caller's value a message may repeat.
ECHO_CHARS: Final = 40
_SLUG = re.compile(r"^[a-z0-9_]{1,64}$")


def clipped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def shown(value: str) -> str:
    """The repr of a caller's ``value``, cut to about 40 characters for a message."""
    # Slicing first keeps repr() from copying a value of millions of characters.
    return clipped(repr(value[: ECHO_CHARS + 1]), ECHO_CHARS)


def require_uuid(field: str, value: object) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise InvalidInputError(field, "must be a UUID")


def optional_uuid(field: str, value: object) -> uuid.UUID | None:
    return None if value is None else require_uuid(field, value)


def require_aware(field: str, value: object) -> datetime:
    """An aware datetime that can be stored: returned in UTC.

    The driver converts to UTC before sending; 9999-12-31T23:00-14:00 (or
    0001-01-01T00:00+14:00) overflows there, so it is refused here instead.
    """
    if not isinstance(value, datetime):
        raise InvalidInputError(field, "must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(field, "must be timezone-aware (naive datetimes are refused)")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        pass
    raise InvalidInputError(field, "must lie between years 1 and 9999 once converted to UTC")


def optional_aware(field: str, value: object) -> datetime | None:
    return None if value is None else require_aware(field, value)


def require_choice(field: str, value: object, choices: tuple[_Choice, ...]) -> _Choice:
    for choice in choices:
        if value == choice:
            return choice
    raise InvalidInputError(field, f"must be one of {', '.join(choices)}")


def require_choices(field: str, values: Iterable[object], choices: tuple[_Choice, ...]) -> tuple[_Choice, ...]:
    if isinstance(values, str):
        raise InvalidInputError(field, "must be a collection of values, not a single string")
    accepted = tuple(require_choice(field, value, choices) for value in values)
    if not accepted:
        raise InvalidInputError(field, "must name at least one value")
    return accepted


def require_text(field: str, value: object, *, max_length: int = 100_000, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(field, "must be a string")
    if not value and not allow_empty:
        raise InvalidInputError(field, "must not be empty")
    if len(value) > max_length:
        raise InvalidInputError(field, f"must be at most {max_length} characters")
    if "\x00" in value:
        raise InvalidInputError(field, "must not contain NUL characters")
    require_utf8(field, value)
    return value


def optional_text(field: str, value: object, *, max_length: int = 100_000, allow_empty: bool = False) -> str | None:
    return None if value is None else require_text(field, value, max_length=max_length, allow_empty=allow_empty)


def require_utf8(field: str, value: str) -> None:
    """Refuse text PostgreSQL cannot store (lone surrogates), without echoing it."""
    if not is_utf8_encodable(value):
        raise InvalidInputError(field, "must be valid Unicode text (it contains a lone surrogate)")


def is_utf8_encodable(value: str) -> bool:
    # The UnicodeEncodeError carries the whole string; it is dropped here so
    # that no error raised later can have it as its context.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def require_slug(field: str, value: object) -> str:
    if not isinstance(value, str) or not _SLUG.match(value):
        raise InvalidInputError(field, "must be a slug: 1 to 64 characters of a-z, 0-9 and _")
    return value


def require_bool(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(field, "must be a bool")
    return value


def optional_int(field: str, value: object, *, minimum: int, maximum: int) -> int | None:
    if value is None:
        return None
    return require_int(field, value, minimum=minimum, maximum=maximum)


def require_int(field: str, value: object, *, minimum: int, maximum: int) -> int:
    # bool is an int subclass; True is not a count.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInputError(field, "must be an integer")
    if not minimum <= value <= maximum:
        raise InvalidInputError(field, f"must be between {minimum} and {maximum}")
    return value


def require_limit(value: object) -> int:
    return require_int("limit", value, minimum=1, maximum=MAX_LIST_LIMIT)
