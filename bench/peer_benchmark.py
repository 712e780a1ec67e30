"""Peer benchmark: claims per second of agent-wake's tick against APScheduler 4 and procrastinate.

Each side has its own scratch database on the same PostgreSQL server, empty
but for its own schema. Before each round, every side's store is emptied and
given N due items (--due, default 2,000): N schedules due a minute ago for
agent-wake and APScheduler (an interval of one hour), N deferred jobs for
procrastinate; then VACUUM ANALYZE. In the round each side, in turn (which
goes first rotates), claims until it has claimed N, one batch after another
exactly as below; after its turn it is checked: N claims, N fire (job) rows
written or finished, one per item, nothing left due, nothing left held. The
figures are the median of the rounds after a warm-up round: claims per
second (wall clock) and the client's CPU per claim (``time.process_time``,
every thread of this process: the library, its driver, the event loop).

What one batch does on each side (a "round trip" is one wait for the server;
the counts are those the server logged with log_statement = all, in the steady
state after the warm-up):

- agent-wake, 200 claims: ``claim_due(now, limit=200, next_fire=now + 1 h)``
  in ``async with sessions.begin() as session:`` (a session from
  ``create_engine_and_session_factory``, asyncpg, partition guard on): BEGIN,
  the locking SELECT (``FOR UPDATE SKIP LOCKED``), one ``INSERT ... SELECT
  FROM unnest`` of the 200 fires, one ``UPDATE ... FROM unnest`` of the 200
  schedules, COMMIT: 3 statements, 5 round trips, 1 commit per 200 claims.
- APScheduler 4, 200 claims: what its scheduler's ``_process_schedules``
  loop does for one batch (at limit 200; the loop itself asks for 100), on
  its ``SQLAlchemyDataStore`` over an async SQLAlchemy engine (asyncpg):
  ``acquire_schedules(scheduler_id, lease_duration, limit=200)`` (BEGIN, one
  ``WITH (SELECT ... FOR UPDATE SKIP LOCKED) UPDATE ... RETURNING *``,
  COMMIT; each row's trigger, args and kwargs unpickled), then per schedule
  the trigger's next fire time and ``add_job(job)`` (BEGIN, one INSERT,
  COMMIT), then ``release_schedules(scheduler_id, results)`` (each trigger
  pickled again; BEGIN, one UPDATE per schedule, sent together as one
  asyncpg ``executemany``, COMMIT): 202 transactions, 401 statements, about
  606 round trips, so about 2 statements, 3 round trips and 1 commit per
  claim. The loop's lease-extension task (which only sleeps in a batch this
  short) and its wait for the next due time are left out.
- procrastinate, 1 claim (it is a job queue: a worker takes one job at a
  time): ``JobManager.fetch_job(queues=None, worker_id)`` then
  ``finish_job(job, Status.SUCCEEDED, delete_job=False)``, the calls its
  worker makes (``delete_job=False`` by its default ``delete_jobs="never"``),
  through its ``PsycopgConnector`` (a psycopg 3 pool). Each call takes a
  pooled connection, which the pool checks with an empty query, then BEGIN,
  one ``SELECT procrastinate_..._v*(...)``, COMMIT. The functions are
  plpgsql: fetch locks the first todo job (``FOR UPDATE SKIP LOCKED``) and
  sets it doing, finish sets it succeeded; a trigger writes an event row for
  each status change. 2 statements, 8 round trips and 2 commits per claim.

So agent-wake and APScheduler claim schedules and write one fire (job) row
per claim, procrastinate moves one existing job through its states; all
three lock with SKIP LOCKED, so each is safe with several workers. Nothing
runs concurrently: one client, one batch at a time, on every side.

    AGENT_WAKE_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python bench/peer_benchmark.py
    python bench/peer_benchmark.py --due 1000 --rounds 3       # a quick run
    python bench/peer_benchmark.py --json /tmp/peers.json      # default bench/results/peer_benchmark.json

Needs ``apscheduler`` (4.0 pre-release, with ``sniffio``, which its SQLAlchemy
data store imports without declaring it) and ``procrastinate`` installed next
to agent-wake. Without AGENT_WAKE_DATABASE_URL an embedded server is started. The
scratch databases are dropped at the end, also when the run fails.
"""

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from apscheduler import Job, Schedule, ScheduleResult, Task
from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
from apscheduler.eventbrokers.local import LocalEventBroker
from apscheduler.triggers.interval import IntervalTrigger
from procrastinate import App, PsycopgConnector
from procrastinate.jobs import Status
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from uuid_utils.compat import uuid7

from agent_wake import DueSchedule, WakeScheduleRepository, create_engine_and_session_factory, resolve_database_url
from agent_wake.testing import ScratchDatabase

DUE_PER_ROUND = 2_000
CLAIM_LIMIT = 200
WARMUP_ROUNDS = 1
MEASURED_ROUNDS = 5
OVERDUE_BY = timedelta(minutes=1)
INTERVAL = timedelta(hours=1)
SCRATCH_PREFIX = "agent_wake_peers"
SIDES = ("agent-wake", "apscheduler", "procrastinate")
# APScheduler: the scheduler's defaults (its identity is any unique string).
APSCHEDULER_ID = "peer-benchmark"
APSCHEDULER_LEASE = timedelta(seconds=30)
APSCHEDULER_EXECUTOR = "async"
TASK_NAME = "wake_agent"
PACKAGES = ("agent-wake", "sqlalchemy", "asyncpg", "apscheduler", "procrastinate", "psycopg", "psycopg-pool")
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "peer_benchmark.json"


class Side(Protocol):
    name: str
    admin: asyncpg.Connection  # a plain connection to the side's database, for seeding and checking

    async def prepare(self, due: int) -> None:
        """Empty the store, then make ``due`` items due (and VACUUM ANALYZE, so every side plans alike)."""

    async def claim_batch(self) -> int:
        """Claim one batch the way the library's own loop does; how many items it claimed."""

    async def check(self, due: int, claimed: int) -> None:
        """Raise unless the round claimed and wrote exactly ``due`` items and left none due or held."""


def libpq_url(url: str) -> str:
    """The scratch database's URL as asyncpg and libpq (psycopg) take it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def require(side: str, what: str, found: int, expected: int) -> None:
    if found != expected:
        raise RuntimeError(f"{side}: {what} is {found}, expected {expected}")


async def admin_connection(stack: AsyncExitStack, url: str) -> asyncpg.Connection:
    """A plain connection for seeding and checking, outside the side under test."""
    conn = await asyncpg.connect(libpq_url(url))
    stack.push_async_callback(conn.close)
    return conn


def one_hour_later(schedule: DueSchedule, now: datetime) -> datetime:
    return now + INTERVAL


@dataclass
class AgentWakeSide:
    admin: asyncpg.Connection
    sessions: async_sessionmaker[AsyncSession]
    name: str = "agent-wake"

    async def prepare(self, due: int) -> None:
        await self.admin.execute("TRUNCATE wake_fires, agent_wake_schedules")
        due_at = datetime.now(UTC) - OVERDUE_BY
        owner, agent = uuid.uuid4(), uuid.uuid4()
        config = json.dumps({"seconds": int(INTERVAL.total_seconds())})
        # One conversation per schedule: the claim spans as many partitions as it claims schedules.
        rows = [(uuid7(), uuid7(), owner, agent, "interval", config, "active", due_at) for _ in range(due)]
        columns = (
            "conversation_id",
            "schedule_id",
            "user_id",
            "agent_id",
            "schedule_type",
            "schedule_config",
            "status",
            "next_fire_at",
        )
        await self.admin.copy_records_to_table("agent_wake_schedules", records=rows, columns=columns)
        await self.admin.execute("VACUUM (ANALYZE) agent_wake_schedules, wake_fires")

    async def claim_batch(self) -> int:
        async with self.sessions.begin() as session:
            claims = await WakeScheduleRepository(session).claim_due(
                datetime.now(UTC), limit=CLAIM_LIMIT, next_fire=one_hour_later
            )
        return len(claims)

    async def check(self, due: int, claimed: int) -> None:
        require(self.name, "schedules claimed", claimed, due)
        fires, schedules = await self.admin.fetchrow(
            "SELECT count(*), count(DISTINCT schedule_id) FROM wake_fires WHERE status = 'dispatching'"
        )
        require(self.name, "dispatching fires written", fires, due)
        require(self.name, "schedules with a fire", schedules, due)
        still_due = await self.admin.fetchval(
            "SELECT count(*) FROM agent_wake_schedules WHERE status = 'active' AND next_fire_at <= now()"
        )
        require(self.name, "schedules still due", still_due, 0)


async def open_agent_wake(stack: AsyncExitStack, server_url: str) -> AgentWakeSide:
    url = await stack.enter_async_context(ScratchDatabase(server_url, prefix=SCRATCH_PREFIX, worker="main"))
    admin = await admin_connection(stack, url)
    engine, sessions = create_engine_and_session_factory(url)
    stack.push_async_callback(engine.dispose)
    return AgentWakeSide(admin, sessions)


def column_value(value: Any) -> Any:
    """A marshalled APScheduler field as COPY takes it: enums by name (as SQLAlchemy's Enum stores them),
    metadata as JSON text."""
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, dict):
        return json.dumps(value)
    return value


@dataclass
class APSchedulerSide:
    admin: asyncpg.Connection
    store: SQLAlchemyDataStore
    name: str = "apscheduler"

    async def prepare(self, due: int) -> None:
        await self.admin.execute("TRUNCATE schedules, jobs")
        # As Scheduler.add_schedule makes one: the trigger advanced to its first fire time, which is the schedule's.
        trigger = IntervalTrigger(seconds=INTERVAL.total_seconds(), start_time=datetime.now(UTC) - OVERDUE_BY)
        first_fire = trigger.next()
        template = Schedule(
            id="template",
            task_id=TASK_NAME,
            trigger=trigger,
            job_executor=APSCHEDULER_EXECUTOR,
            next_fire_time=first_fire,
        ).marshal(self.store.serializer)
        columns = list(template)
        values = [column_value(template[column]) for column in columns]
        id_index = columns.index("id")
        rows = [(*values[:id_index], f"schedule-{n}", *values[id_index + 1 :]) for n in range(due)]
        await self.admin.copy_records_to_table("schedules", records=rows, columns=columns)
        await self.admin.execute("VACUUM (ANALYZE) schedules, jobs")

    async def claim_batch(self) -> int:
        schedules = await self.store.acquire_schedules(APSCHEDULER_ID, APSCHEDULER_LEASE, limit=CLAIM_LIMIT)
        now = datetime.now(UTC)
        results = []
        for schedule in schedules:
            # The scheduler loop with its defaults (coalesce "latest", no jitter, no misfire grace time):
            # the last fire time not after now gets the job, the first one after it is the next.
            fire_time = schedule.next_fire_time
            next_fire_time = schedule.trigger.next()
            while next_fire_time is not None and next_fire_time <= now:
                fire_time, next_fire_time = next_fire_time, schedule.trigger.next()
            await self.store.add_job(
                Job(
                    task_id=schedule.task_id,
                    args=schedule.args,
                    kwargs=schedule.kwargs,
                    schedule_id=schedule.id,
                    scheduled_fire_time=fire_time,
                    jitter=timedelta(0),
                    start_deadline=None,
                    executor=schedule.job_executor,
                    result_expiration_time=schedule.job_result_expiration_time,
                    metadata=schedule.metadata.copy(),
                )
            )
            results.append(
                ScheduleResult(
                    schedule_id=schedule.id,
                    task_id=schedule.task_id,
                    trigger=schedule.trigger,
                    last_fire_time=fire_time,
                    next_fire_time=next_fire_time,
                )
            )
        await self.store.release_schedules(APSCHEDULER_ID, results)
        return len(schedules)

    async def check(self, due: int, claimed: int) -> None:
        require(self.name, "schedules acquired", claimed, due)
        jobs, schedules = await self.admin.fetchrow("SELECT count(*), count(DISTINCT schedule_id) FROM jobs")
        require(self.name, "jobs added", jobs, due)
        require(self.name, "schedules with a job", schedules, due)
        still_due, still_held = await self.admin.fetchrow(
            "SELECT count(*) FILTER (WHERE next_fire_time <= now()), count(acquired_by) FROM schedules"
        )
        require(self.name, "schedules still due", still_due, 0)
        require(self.name, "schedules still acquired", still_held, 0)


async def open_apscheduler(stack: AsyncExitStack, server_url: str) -> APSchedulerSide:
    url = await stack.enter_async_context(
        ScratchDatabase(server_url, prefix=SCRATCH_PREFIX, worker="main", migrate=None)
    )
    admin = await admin_connection(stack, url)
    engine = create_async_engine(url)
    stack.push_async_callback(engine.dispose)  # the store leaves an engine it was given open
    logger = logging.getLogger("apscheduler")
    broker = LocalEventBroker()
    await broker.start(stack, logger)
    store = SQLAlchemyDataStore(engine)
    await store.start(stack, broker, logger)  # creates APScheduler's tables
    await store.add_task(Task(id=TASK_NAME, func=None, job_executor=APSCHEDULER_EXECUTOR))
    return APSchedulerSide(admin, store)


@dataclass
class ProcrastinateSide:
    admin: asyncpg.Connection
    app: App
    worker_id: int
    name: str = "procrastinate"

    async def prepare(self, due: int) -> None:
        # CASCADE: the events and periodic-defer rows that reference the jobs.
        await self.admin.execute("TRUNCATE procrastinate_jobs CASCADE")
        await self.app.configure_task(TASK_NAME).batch_defer_async(*({"claim": n} for n in range(due)))
        await self.admin.execute("VACUUM (ANALYZE) procrastinate_jobs, procrastinate_events")

    async def claim_batch(self) -> int:
        job = await self.app.job_manager.fetch_job(queues=None, worker_id=self.worker_id)
        if job is None:
            return 0
        await self.app.job_manager.finish_job(job, Status.SUCCEEDED, delete_job=False)
        return 1

    async def check(self, due: int, claimed: int) -> None:
        require(self.name, "jobs fetched", claimed, due)
        succeeded, pending = await self.admin.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'succeeded' AND worker_id = $1), "
            "count(*) FILTER (WHERE status IN ('todo', 'doing')) FROM procrastinate_jobs",
            self.worker_id,
        )
        require(self.name, "jobs finished", succeeded, due)
        require(self.name, "jobs still todo or doing", pending, 0)


async def open_procrastinate(stack: AsyncExitStack, server_url: str) -> ProcrastinateSide:
    url = await stack.enter_async_context(
        ScratchDatabase(server_url, prefix=SCRATCH_PREFIX, worker="main", migrate=None)
    )
    admin = await admin_connection(stack, url)
    # The app is made in this script, which procrastinate warns about because a worker that imports
    # tasks by module path would not find them; nothing here is imported by path.
    logging.getLogger("procrastinate.blueprints").addFilter(
        lambda record: getattr(record, "action", None) != "app_defined_in___main__"
    )
    app = App(connector=PsycopgConnector(conninfo=libpq_url(url)))
    await app.open_async()
    stack.push_async_callback(app.close_async)
    await app.schema_manager.apply_schema_async()
    # As Worker.run does before its first fetch: fetch_job records which worker took the job.
    worker_id = await app.job_manager.register_worker()
    return ProcrastinateSide(admin, app, worker_id)


@dataclass(frozen=True)
class Turn:
    claims: int
    seconds: float
    cpu_seconds: float


async def take_turn(side: Side, due: int) -> Turn:
    """Claim batches until ``due`` are claimed; never past them, so no side pays for an empty poll."""
    claimed = 0
    began, cpu_began = time.perf_counter(), time.process_time()
    while claimed < due:
        batch = await side.claim_batch()
        if batch == 0:
            break
        claimed += batch
    turn = Turn(claimed, time.perf_counter() - began, time.process_time() - cpu_began)
    await side.check(due, claimed)
    return turn


async def measure(sides: list[Side], due: int, rounds: int) -> dict[str, list[Turn]]:
    turns: dict[str, list[Turn]] = {side.name: [] for side in sides}
    for round_index in range(WARMUP_ROUNDS + rounds):
        label = "warm-up" if round_index < WARMUP_ROUNDS else f"round {round_index - WARMUP_ROUNDS + 1}/{rounds}"
        print(f"{label}: seeding {due:,} due items per side ...", file=sys.stderr)
        for side in sides:
            await side.prepare(due)
        first = round_index % len(sides)
        for side in sides[first:] + sides[:first]:
            turn = await take_turn(side, due)
            print(f"  {side.name:<14}{turn.claims / turn.seconds:>10,.0f} claims/s", file=sys.stderr)
            if round_index >= WARMUP_ROUNDS:
                turns[side.name].append(turn)
    return turns


def summary(turns: list[Turn]) -> dict[str, Any]:
    rates = [turn.claims / turn.seconds for turn in turns]
    cpu = [1e6 * turn.cpu_seconds / turn.claims for turn in turns]
    return {
        "claims_per_s": statistics.median(rates),
        "client_cpu_us_per_claim": statistics.median(cpu),
        "rounds_claims_per_s": rates,
        "rounds_client_cpu_us_per_claim": cpu,
    }


OPENERS: dict[str, Callable[[AsyncExitStack, str], Awaitable[Side]]] = {
    "agent-wake": open_agent_wake,
    "apscheduler": open_apscheduler,
    "procrastinate": open_procrastinate,
}


async def benchmark(due: int, rounds: int) -> dict[str, Any]:
    server_url = resolve_database_url(allow_embedded=True)
    async with AsyncExitStack() as stack:  # closes every side, then drops its database, also on failure
        sides: list[Side] = [await OPENERS[name](stack, server_url) for name in SIDES]
        turns = await measure(sides, due, rounds)
        server_version = await sides[0].admin.fetchval("SHOW server_version")
        shared_buffers = await sides[0].admin.fetchval("SHOW shared_buffers")
    results = {name: summary(turns[name]) for name in SIDES}
    ours = results["agent-wake"]
    for name in SIDES[1:]:
        peer = results[name]
        peer["agent_wake_over_peer_claims_per_s"] = ours["claims_per_s"] / peer["claims_per_s"]
        peer["agent_wake_over_peer_cpu_per_claim"] = ours["client_cpu_us_per_claim"] / peer["client_cpu_us_per_claim"]
    return {
        "machine": {
            "cpu_count": os.cpu_count(),
            "postgresql": server_version,
            "shared_buffers": shared_buffers,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": {package: version(package) for package in PACKAGES},
        "settings": {
            "due_per_round": due,
            "claim_limit": CLAIM_LIMIT,
            "rounds": rounds,
            "warmup_rounds": WARMUP_ROUNDS,
        },
        "method": (
            f"claims/s = median of {rounds} rounds, after {WARMUP_ROUNDS} warm-up round, of {due} claims per side "
            "(wall clock, the side going first rotating); client CPU = time.process_time per claim, median of the "
            "same rounds; each side in its own scratch database, emptied and seeded with the due items (COPY, or "
            "procrastinate's batch_defer_async) and VACUUM ANALYZEd before each round, checked after its turn; "
            "see the module docstring for what one batch sends on each side"
        ),
        "sides": results,
    }


def print_report(report: dict[str, Any]) -> None:
    machine, settings = report["machine"], report["settings"]
    print(
        f"\nPostgreSQL {machine['postgresql']}, shared_buffers {machine['shared_buffers']}, "
        f"{machine['cpu_count']} CPUs; "
        f"{settings['due_per_round']:,} due items per side per round, median of {settings['rounds']} rounds"
    )
    print(f"\n{'side':<16}{'version':<12}{'claims/s':>10}{'CPU µs/claim':>14}{'agent-wake/peer':>17}{'CPU ratio':>11}")
    for name, row in report["sides"].items():
        ratio = row.get("agent_wake_over_peer_claims_per_s")
        cpu_ratio = row.get("agent_wake_over_peer_cpu_per_claim")
        print(
            f"{name:<16}{report['versions'][name]:<12}{row['claims_per_s']:>10,.0f}"
            f"{row['client_cpu_us_per_claim']:>14,.1f}"
            f"{'' if ratio is None else f'{ratio:.2f}':>17}{'' if cpu_ratio is None else f'{cpu_ratio:.3f}':>11}"
        )
    print(
        "\nagent-wake/peer: agent-wake's claims/s over the peer's; CPU ratio: agent-wake's client CPU per claim "
        "over the peer's (below 1: agent-wake spends less)"
    )
    print(f"whole run {report['seconds']:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--due", type=int, default=DUE_PER_ROUND, help=f"due items per side per round (default {DUE_PER_ROUND:,})"
    )
    parser.add_argument(
        "--rounds", type=int, default=MEASURED_ROUNDS, help=f"measured rounds (default {MEASURED_ROUNDS})"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write the figures ({DEFAULT_JSON})")
    arguments = parser.parse_args()
    if arguments.due < 1 or arguments.rounds < 1:
        parser.error("--due and --rounds must be at least 1")
    began = time.monotonic()
    report = asyncio.run(benchmark(arguments.due, arguments.rounds))
    report["seconds"] = time.monotonic() - began
    print_report(report)
    arguments.json.parent.mkdir(parents=True, exist_ok=True)
    arguments.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {arguments.json}")


if __name__ == "__main__":
    main()
