"""The ``agent-wake`` command (also ``python -m agent_wake``): the jobs an
operator runs on a deployment, each over ``public`` or every schema that
matches ``--schemas`` (a shell-style pattern such as ``'agent_*'``).

- ``adopt``: stamp schemas the older runner built (see :mod:`agent_wake.adoption`);
- ``upgrade``: every schema to our head, each with its own version table;
- ``distribute``: the distributed layout (see :mod:`agent_wake.distribution`);
- ``prune-fires``, ``gc-orphans``, ``rotate-keys``: the batch jobs of
  :mod:`agent_wake.maintenance`;
- ``doctor``: what is wrong with a deployment, changing nothing.

Every command that writes takes ``--dry-run``. Exit codes: 0 done (doctor:
nothing found); 1 refused, failed, or doctor found something; 2 bad
arguments or configuration; 3 the database could not be reached or failed.
The database is ``--url``, else ``AGENT_WAKE_DATABASE_URL`` (the embedded
server only with ``AGENT_WAKE_EMBEDDED=1``).
"""

import argparse
import asyncio
import fnmatch
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any, Final, TypeVar

from sqlalchemy import pool, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from agent_wake import maintenance
from agent_wake._progress import ProgressBar
from agent_wake.adoption import (
    AdoptionRefusedError,
    SchemaAdoption,
    SchemaUpgrade,
    UpgradeFailedError,
    adopt_schema,
    upgrade_schema,
)
from agent_wake.database import create_engine_and_session_factory, resolve_database_url, validate_schema_name
from agent_wake.distribution import Distribution, DistributionRefusedError, distribute_schema
from agent_wake.doctor import examine_schema
from agent_wake.errors import AgentWakeError, InvalidInputError, SecretDecryptionError, first_line
from agent_wake.schedule_configs import delay_seconds
from agent_wake.secret_box import SecretBox

__all__ = ["EXIT_DATABASE", "EXIT_FOUND", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK: Final = 0
EXIT_FOUND: Final = 1
EXIT_USAGE: Final = 2
EXIT_DATABASE: Final = 3
KEYS_VARIABLE: Final = "AGENT_WAKE_SECRET_KEYS"

_Outcome = TypeVar("_Outcome")
Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (``sys.argv[1:]`` when ``None``) and return its exit code."""
    args = _parser().parse_args(argv)
    command: Command = args.command
    try:
        return asyncio.run(command(args))
    except InvalidInputError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except (OperationalError, OSError) as exc:
        _error(f"the database cannot be reached: {first_line(exc)}")
        return EXIT_DATABASE
    except (DBAPIError, AgentWakeError) as exc:
        _error(first_line(exc))
        return EXIT_DATABASE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-wake",
        description="Operate agent-wake's tables: adopt, upgrade, prune, collect orphans, rotate keys, diagnose.",
        epilog="Exit codes: 0 done, 1 refused/failed/found problems, 2 bad arguments, 3 database error.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, run: Command, summary: str, *, writes: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary)
        sub.set_defaults(command=run)
        sub.add_argument("--url", help="the database URL (default: $AGENT_WAKE_DATABASE_URL)")
        sub.add_argument(
            "--schemas",
            default="public",
            metavar="PATTERN",
            help="the schemas to work on, a shell-style pattern such as 'agent_*' (default: public)",
        )
        if writes:
            sub.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
        return sub

    command("adopt", _adopt, "Stamp schemas built by the older migration runner at our revision for their step.")
    command("upgrade", _upgrade, "Run our revisions to head in every matching schema.")
    command(
        "distribute",
        _distribute,
        "Key the wake tables by conversation_id everywhere and, on Citus, distribute them (see the README).",
    )
    prune = command("prune-fires", _prune_fires, "Delete old fire history in short batches.")
    prune.add_argument("--older-than", required=True, type=_duration, metavar="AGE", help="e.g. 30d, 12h, 90m")
    prune.add_argument("--batch-size", type=int, default=1000)
    orphans = command("gc-orphans", _gc_orphans, "Delete rows whose conversation no longer exists.")
    orphans.add_argument("--batch-size", type=int, default=1000)
    rotate = command("rotate-keys", _rotate_keys, "Re-encrypt every webhook secret under the first key.")
    rotate.add_argument(
        "--keys-variable",
        default=KEYS_VARIABLE,
        metavar="NAME",
        help=f"the environment variable holding the Fernet keys, comma-separated, the new one first "
        f"(default: {KEYS_VARIABLE}); keys are never taken on the command line",
    )
    rotate.add_argument("--batch-size", type=int, default=500)
    doctor = command(
        "doctor", _doctor, "Check the schema, the guard, indexes, stale fires, orphans, configs.", writes=False
    )
    doctor.add_argument(
        "--stale-after",
        type=_duration,
        default=timedelta(minutes=15),
        metavar="AGE",
        help="a dispatching fire older than this is stale (default: 15m)",
    )
    return parser


def _duration(value: str) -> timedelta:
    # The same syntax as a relative_delay's delay, read by the same parser.
    try:
        seconds = delay_seconds(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration such as 30d, 12h, 90m or 45s") from None
    return timedelta(seconds=seconds)


async def _adopt(args: argparse.Namespace) -> int:
    def report(schema: str, adoption: SchemaAdoption) -> None:
        verb = "stamped" if adoption.stamped else "would stamp"
        upcoming = ", ".join(adoption.pending) or "nothing"
        _say(
            f"{schema}: step {adoption.step} of the older runner; {verb} {adoption.revision}; upgrade runs next: "
            f"{upcoming}"
        )

    return await _each_schema(args, "adopt", adopt_schema, report, stop_at_failure=False)


async def _upgrade(args: argparse.Namespace) -> int:
    def report(schema: str, upgrade: SchemaUpgrade) -> None:
        if not upgrade.applied:
            _say(f"{schema}: at head ({', '.join(upgrade.before)})")
        else:
            verb = "would run" if upgrade.dry_run else "ran"
            _say(f"{schema}: {verb} {', '.join(upgrade.applied)}")

    return await _each_schema(args, "upgrade", upgrade_schema, report, stop_at_failure=True)


async def _distribute(args: argparse.Namespace) -> int:
    def report(schema: str, done: Distribution) -> None:
        steps = [step for step, due in (("re-key", done.rekeyed), ("distribute on Citus", done.distributed)) if due]
        if not steps:
            where = "re-keyed and distributed" if done.citus else "re-keyed (no Citus here: not distributed)"
            _say(f"{schema}: already {where}")
        elif done.dry_run:
            _say(f"{schema}: would {' and '.join(steps)}")
        else:
            _say(f"{schema}: {' and '.join(_DONE[step] for step in steps)}")

    return await _each_schema(args, "distribute", distribute_schema, report, stop_at_failure=True)


_DONE: Final = {"re-key": "re-keyed", "distribute on Citus": "distributed on Citus"}


async def _prune_fires(args: argparse.Namespace) -> int:
    async def prune(sessions: async_sessionmaker[AsyncSession], bar: ProgressBar) -> str:
        deleted = await maintenance.prune_fires(
            sessions, older_than=args.older_than, batch_size=args.batch_size, dry_run=args.dry_run, progress=bar.update
        )
        return f"{'would delete' if args.dry_run else 'deleted'} {deleted} fires"

    return await _each_schema_with_sessions(args, "prune-fires", prune)


async def _gc_orphans(args: argparse.Namespace) -> int:
    async def collect(sessions: async_sessionmaker[AsyncSession], bar: ProgressBar) -> str:
        counts = await maintenance.delete_orphans(
            sessions, batch_size=args.batch_size, dry_run=args.dry_run, progress=bar.update
        )
        return (
            f"{'would delete' if args.dry_run else 'deleted'} {counts.fires} fires, {counts.schedules} schedules, "
            f"{counts.subscriptions} subscriptions of conversations that no longer exist"
        )

    return await _each_schema_with_sessions(args, "gc-orphans", collect)


async def _rotate_keys(args: argparse.Namespace) -> int:
    keys = [key.strip() for key in os.environ.get(args.keys_variable, "").split(",") if key.strip()]
    if not keys:
        raise InvalidInputError(args.keys_variable, "must hold the Fernet keys, comma-separated, the new one first")
    box = SecretBox.from_keys(*keys)

    async def rotate(sessions: async_sessionmaker[AsyncSession], bar: ProgressBar) -> str:
        rotated = await maintenance.rotate_secrets(
            sessions, box, batch_size=args.batch_size, dry_run=args.dry_run, progress=bar.update
        )
        return f"{'would re-encrypt' if args.dry_run else 're-encrypted'} {rotated} secrets under the first key"

    return await _each_schema_with_sessions(args, "rotate-keys", rotate)


async def _doctor(args: argparse.Namespace) -> int:
    url = resolve_database_url(args.url)
    engine = create_async_engine(url, poolclass=pool.NullPool)
    findings = 0
    try:
        for schema in await _matching_schemas(engine, args.schemas):
            report = await examine_schema(engine, url, schema, stale_after=args.stale_after)
            for line in report.lines():
                _say(f"{schema}: {line}")
            findings += len(report.findings)
    finally:
        await engine.dispose()
    _say(f"doctor: {findings} finding{'s' if findings != 1 else ''}")
    return EXIT_FOUND if findings else EXIT_OK


async def _each_schema(
    args: argparse.Namespace,
    label: str,
    job: Callable[..., _Outcome],
    report: Callable[[str, _Outcome], None],
    *,
    stop_at_failure: bool,
) -> int:
    """Run ``job(connection, schema, dry_run=...)`` on each matching schema, on a connection
    of its own, and ``report`` what it returns; a refusal or a database error is said for its
    schema, and with ``stop_at_failure`` ends the run there."""
    engine = create_async_engine(resolve_database_url(args.url), poolclass=pool.NullPool)
    failed = 0
    try:
        schemas = await _matching_schemas(engine, args.schemas)
        bar = ProgressBar(label, sys.stderr)
        try:
            for done, schema in enumerate(schemas):
                bar.update(done, len(schemas))
                try:
                    async with engine.connect() as connection:
                        outcome = await connection.run_sync(job, schema, dry_run=args.dry_run)
                except (AdoptionRefusedError, DistributionRefusedError) as exc:
                    _say(f"{schema}: refused: {exc.reason}")
                except UpgradeFailedError as exc:
                    _say(f"{schema}: failed: {exc}")
                except (DBAPIError, AgentWakeError) as exc:
                    _say(f"{schema}: failed: {first_line(exc)}")
                else:
                    report(schema, outcome)
                    continue
                failed += 1
                if stop_at_failure:
                    left = schemas[done + 1 :]
                    if left:
                        _say(f"not attempted: {', '.join(left)}")
                    break
            else:
                bar.update(len(schemas), len(schemas))
        finally:
            bar.close()
    finally:
        await engine.dispose()
    return EXIT_FOUND if failed else EXIT_OK


async def _each_schema_with_sessions(
    args: argparse.Namespace,
    label: str,
    work: Callable[[async_sessionmaker[AsyncSession], ProgressBar], Awaitable[str]],
) -> int:
    url = resolve_database_url(args.url)
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        schemas = await _matching_schemas(engine, args.schemas)
        with_tables = await _schemas_with_wake_tables(engine, schemas)
    finally:
        await engine.dispose()
    for schema in schemas:
        if schema not in with_tables:
            _say(f"{schema}: skipped: it has no agent-wake tables")
            continue
        schema_engine, sessions = create_engine_and_session_factory(url, schema=schema, poolclass=pool.NullPool)
        bar = ProgressBar(f"{schema} {label}", sys.stderr)
        try:
            _say(f"{schema}: {await work(sessions, bar)}")
        except SecretDecryptionError as exc:
            _say(f"{schema}: stopped: {exc}")
            return EXIT_FOUND
        finally:
            bar.close()
            await schema_engine.dispose()
    return EXIT_OK


async def _schemas_with_wake_tables(engine: AsyncEngine, schemas: list[str]) -> set[str]:
    async with engine.connect() as connection:
        found = await connection.execute(
            text(
                "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = 'wake_fires' AND n.nspname = ANY(:schemas)"
            ),
            {"schemas": schemas},
        )
        return set(found.scalars())


async def _matching_schemas(engine: AsyncEngine, pattern: str) -> list[str]:
    async with engine.connect() as connection:
        names = (await connection.execute(text("SELECT nspname FROM pg_namespace ORDER BY nspname"))).scalars()
        schemas = [name for name in names if fnmatch.fnmatchcase(name, pattern) and _is_users_schema(name)]
    if not schemas:
        raise InvalidInputError("--schemas", f"no schema matches {pattern!r}")
    return schemas


def _is_users_schema(name: str) -> bool:
    # Only plain identifiers, as the jobs put the name in SQL and in
    # search_path; never PostgreSQL's own schemas, whatever the pattern.
    try:
        validate_schema_name(name)
    except InvalidInputError:
        return False
    return not name.startswith("pg_") and name != "information_schema"


def _say(line: str) -> None:
    print(line, flush=True)


def _error(message: str) -> None:
    print(f"agent-wake: {message}", file=sys.stderr, flush=True)
