"""The tick benchmark's data: schedules and fires generated as a service accumulates them, COPYed in."""

import json
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

import asyncpg
from uuid_utils.compat import uuid7

SCHEDULES, FIRES, CONVERSATIONS = 100_000, 1_000_000, 10_000
RANDOM_SEED = 20_240_601
COPY_CHUNK = 20_000

INTERVALS = (300, 900, 1_800, 3_600, 21_600, 86_400)
SCHEDULE_STATUS_WEIGHTS = {"active": 85, "paused": 10, "expired": 5}
FIRE_STATUS_WEIGHTS = {
    "fired": 620,
    "fired_silent": 150,
    "skipped_busy": 100,
    "failed": 60,
    "skipped_rate_limit": 30,
    "yielded": 20,
    "skipped_cap": 15,
    "skipped_no_handler": 4,
    "dispatching": 1,
}
OUTPUT = "Checked the inbox: two new messages, one needs a reply today."
SCHEDULE_COLUMNS = (
    "conversation_id",
    "schedule_id",
    "user_id",
    "agent_id",
    "schedule_type",
    "schedule_config",
    "task_prompt",
    "execution_mode",
    "status",
    "next_fire_at",
    "last_fired_at",
    "name",
    "missed_fire_policy",
    "date_created",
    "date_updated",
)
FIRE_COLUMNS = (
    "conversation_id",
    "fire_id",
    "schedule_id",
    "scheduled_fire_at",
    "actual_fired_at",
    "status",
    "display_suppressed",
    "output_text",
    "latency_ms",
    "error",
    "date_created",
)

Pair = tuple[uuid.UUID, uuid.UUID]  # (conversation_id, schedule_id)


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self._drawn = label, max(total, 1), 0, 0.0

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._drawn < 0.2 and self.done < self.total:
            return
        self._drawn = now
        filled = 40 * self.done // self.total
        sys.stderr.write(f"\r{self.label:<9}[{'#' * filled}{'.' * (40 - filled)}] {self.done:>11,}/{self.total:,}")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


@dataclass(frozen=True)
class Seeded:
    tick: datetime  # the tick's "now": every seeded next_fire_at is after it, every fire an hour or more before
    owners: dict[uuid.UUID, tuple[uuid.UUID, uuid.UUID]]  # conversation_id -> (user_id, agent_id)
    schedules: list[Pair]
    active: list[Pair]
    fires: int


def fire_row(rng: random.Random, pair: Pair, scheduled: datetime, status: str) -> tuple[Any, ...]:
    actual = scheduled + timedelta(milliseconds=rng.randint(5, 3_000))
    return (
        pair[0],
        uuid7(),
        pair[1],
        scheduled,
        actual,
        status,
        status == "fired_silent",
        OUTPUT if status in ("fired", "fired_silent") else None,
        None if status == "dispatching" else rng.randint(200, 30_000),
        "handler timed out after 30s" if status == "failed" else None,
        actual,
    )


def generate(
    rng: random.Random, scale: float, tick: datetime
) -> tuple[Seeded, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Schedule and fire rows; conversations own a skewed (log-normal) share of the schedules."""
    conversation_count = max(1, round(CONVERSATIONS * scale))
    schedule_count = max(conversation_count, round(SCHEDULES * scale))
    agents = [uuid.uuid4() for _ in range(max(1, conversation_count // 10))]
    owners = {uuid7(): (uuid.uuid4(), rng.choice(agents)) for _ in range(conversation_count)}
    conversations = list(owners)
    weights = [rng.lognormvariate(0, 1) for _ in conversations]
    homes = conversations + rng.choices(conversations, weights, k=schedule_count - conversation_count)
    fires_of = Counter(rng.choices(range(schedule_count), k=round(FIRES * scale)))
    fire_statuses = iter(rng.choices(list(FIRE_STATUS_WEIGHTS), list(FIRE_STATUS_WEIGHTS.values()), k=fires_of.total()))
    statuses = rng.choices(list(SCHEDULE_STATUS_WEIGHTS), list(SCHEDULE_STATUS_WEIGHTS.values()), k=schedule_count)
    schedule_rows: list[tuple[Any, ...]] = []
    fire_rows: list[tuple[Any, ...]] = []
    schedules: list[Pair] = []
    progress = Progress("generate", schedule_count)
    for index, (conversation_id, status) in enumerate(zip(homes, statuses, strict=True)):
        pair = (conversation_id, uuid7())
        seconds = rng.choice(INTERVALS)
        fires = [
            fire_row(rng, pair, tick - timedelta(seconds=offset), next(fire_statuses))
            for offset in rng.sample(range(3_600, 30 * 86_400), fires_of[index])
        ]
        fire_rows += fires
        created = tick - timedelta(days=30 + 60 * rng.random())
        last_fired_at = max((fire[4] for fire in fires), default=None)
        schedule_rows.append(
            (
                *pair,
                *owners[conversation_id],
                "interval",
                json.dumps({"seconds": seconds}),
                f"Every {seconds // 60} minutes: check for anything that needs the user's attention.",
                "spawn" if rng.random() < 0.2 else "inline",
                status,
                tick + timedelta(seconds=rng.uniform(60, seconds)) if status == "active" else None,
                last_fired_at,
                f"check every {seconds // 60} min",
                "catch_up" if rng.random() < 0.1 else "coalesce",
                created,
                last_fired_at or created,
            )
        )
        schedules.append(pair)
        progress.advance()
    # COPY in time order, as the rows would have arrived.
    schedule_rows.sort(key=itemgetter(13))
    fire_rows.sort(key=itemgetter(4))
    active = [pair for pair, status in zip(schedules, statuses, strict=True) if status == "active"]
    return Seeded(tick, owners, schedules, active, len(fire_rows)), schedule_rows, fire_rows


async def seed(conn: asyncpg.Connection, scale: float, rng: random.Random) -> Seeded:
    seeded, schedule_rows, fire_rows = generate(rng, scale, datetime.now(UTC))
    progress = Progress("copy", len(schedule_rows) + len(fire_rows))
    for table, columns, rows in (
        ("agent_wake_schedules", SCHEDULE_COLUMNS, schedule_rows),
        ("wake_fires", FIRE_COLUMNS, fire_rows),
    ):
        for start in range(0, len(rows), COPY_CHUNK):
            chunk = rows[start : start + COPY_CHUNK]
            await conn.copy_records_to_table(table, records=chunk, columns=columns)
            progress.advance(len(chunk))
    print("vacuum analyze ...", file=sys.stderr)
    await conn.execute("VACUUM (ANALYZE) agent_wake_schedules, wake_fires")
    return seeded
