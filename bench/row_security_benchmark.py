"""What row-level security costs: get, create and claim_due with RLS off and on, in the same run.

Seeds a scratch database (--conversations conversations, 4 schedules each)
with two login roles made for the run, then measures, in rounds that
alternate which side goes first (median of the rounds after a warm-up):

- ``get`` and ``create``, one transaction each (BEGIN, the call, COMMIT), as
  the application role: *off* is RLS switched off and a session that
  declares nothing (today's setup); *on* is RLS enforced and a session
  configured by ``use_row_security`` (one declaration round trip per
  transaction, the policy checked once per statement);
- ``claim_due(limit=200)`` as the maintenance role (its policy admits every
  row), one transaction per batch, the claimed schedules made due again
  between rounds.

    AGENT_WAKE_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python bench/row_security_benchmark.py

The URL's user must be able to create roles and databases. Without
AGENT_WAKE_DATABASE_URL an embedded server is started. The scratch database
and the roles are dropped at the end. Prints one JSON object.
"""

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from agent_wake import (
    WakeScheduleRepository,
    create_engine_and_session_factory,
    enforce_row_security,
    resolve_database_url,
    use_row_security,
)
from agent_wake.testing import ScratchDatabase
from agent_wake.testing.row_security_roles import create_row_security_roles, drop_row_security_roles

Operation = Callable[[AsyncSession, int], Awaitable[Any]]


async def _transactions_per_second(
    sessions: async_sessionmaker[AsyncSession], operation: Operation, count: int
) -> float:
    started = time.perf_counter()
    for index in range(count):
        async with sessions() as session:
            await operation(session, index)
            await session.commit()
    return count / (time.perf_counter() - started)


def _schedule_values(conversation_id: uuid.UUID) -> dict[str, Any]:
    return {
        "conversation_id": conversation_id,
        "user_id": uuid.uuid4(),
        "agent_id": uuid.uuid4(),
        "schedule_type": "interval",
        "schedule_config": {"seconds": 60},
        "next_fire_at": datetime.now(UTC) - timedelta(minutes=5),
    }


async def main(conversations: int, rounds: int, block: int) -> dict[str, Any]:
    server = resolve_database_url(allow_embedded=True)
    scratch = ScratchDatabase(server, prefix="agent_wake_bench", worker="rls")
    url = await scratch.create()
    roles = await create_row_security_roles(url)  # installed and enforced
    owner = create_async_engine(url)
    application_engine, application = create_engine_and_session_factory(roles.application_url)
    maintenance_engine, maintenance = create_engine_and_session_factory(roles.maintenance_url)
    declaring = async_sessionmaker(application_engine, expire_on_commit=False)
    use_row_security(declaring, roles.key)
    try:
        keys: list[tuple[uuid.UUID, uuid.UUID]] = []
        async with maintenance() as session:
            repository = WakeScheduleRepository(session)
            for _ in range(conversations):
                conversation_id = uuid.uuid4()
                for _ in range(4):
                    schedule = await repository.create(**_schedule_values(conversation_id))
                    keys.append((conversation_id, schedule.schedule_id))
            await session.commit()
        async with owner.connect() as connection:
            await connection.execute(text("ANALYZE"))

        async def get(session: AsyncSession, index: int) -> None:
            conversation_id, schedule_id = keys[index * 7919 % len(keys)]
            assert await WakeScheduleRepository(session).get(conversation_id, schedule_id) is not None

        async def create(session: AsyncSession, index: int) -> None:
            await WakeScheduleRepository(session).create(**_schedule_values(keys[index * 4 % len(keys)][0]))

        async def claim(session: AsyncSession, index: int) -> None:
            claimed = await WakeScheduleRepository(session).claim_due(
                datetime.now(UTC), limit=200, next_fire=lambda schedule, now: now + timedelta(days=1)
            )
            assert len(claimed) == 200, len(claimed)

        async def switch(enabled: bool) -> None:
            async with owner.begin() as connection:
                await connection.run_sync(enforce_row_security, enabled=enabled)

        async def make_due_again() -> None:
            async with owner.begin() as connection:
                await connection.execute(
                    text("UPDATE agent_wake_schedules SET next_fire_at = now() - interval '5 minutes'")
                )
                await connection.execute(text("DELETE FROM wake_fires"))

        claim_batches = max(1, len(keys) // 200 - 1)
        paths: dict[str, dict[str, list[float]]] = {
            name: {"off": [], "on": []} for name in ("get", "create", "claim_due")
        }
        for round_number in range(rounds + 1):
            sides = ("off", "on") if round_number % 2 == 0 else ("on", "off")
            for side in sides:
                await switch(side == "on")
                sessions = declaring if side == "on" else application
                measured = {
                    "get": await _transactions_per_second(sessions, get, block),
                    "create": await _transactions_per_second(sessions, create, block),
                }
                await make_due_again()
                measured["claim_due"] = 200 * await _transactions_per_second(maintenance, claim, claim_batches)
                if round_number:  # round 0 warms the caches and the pools
                    for name, value in measured.items():
                        paths[name][side].append(value)
        await switch(True)
        return {
            "conversations": conversations,
            "schedules": len(keys),
            "rounds": rounds,
            "transactions_per_side_per_round": block,
            "unit": "transactions/s (claim_due: claims/s)",
            "paths": {
                name: {
                    "rls_off": round(statistics.median(sides["off"])),
                    "rls_on": round(statistics.median(sides["on"])),
                    "on_over_off": round(statistics.median(sides["on"]) / statistics.median(sides["off"]), 3),
                }
                for name, sides in paths.items()
            },
        }
    finally:
        await application_engine.dispose()
        await maintenance_engine.dispose()
        await owner.dispose()
        await drop_row_security_roles(url, roles)
        await scratch.drop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=500, help="transactions per side per round (get, create)")
    arguments = parser.parse_args()
    print(json.dumps(asyncio.run(main(arguments.conversations, arguments.rounds, arguments.block)), indent=2))
