"""A fixed instant for the tests, so expected times are written out, not computed."""

from datetime import UTC, datetime, timedelta

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def in_minutes(minutes: int) -> datetime:
    return NOW + timedelta(minutes=minutes)
