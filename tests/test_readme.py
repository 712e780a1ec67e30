"""Every fenced block of README.md runs here, the way a reader would use it.

The line right before each block is an HTML comment, invisible on GitHub,
that says how the block runs. A block without one fails
`test_every_block_says_how_it_runs`, so no snippet goes untested:

``<!-- readme-test: program -->``
    A complete Python program, run with this interpreter in a subprocess with
    ``AGENT_WAKE_DATABASE_URL`` set to a migrated scratch database of its own;
    it must exit 0.
``<!-- readme-test: program, printing its comments -->``
    The same, and the lines it prints are the block's comments, in order:
    each without its ``#`` and without a remark set off by two spaces and a
    parenthesis (``# None   (already past)`` is a line ``None``).
``<!-- readme-test: fragment with NAME, NAME -->``
    Python statements, top-level ``await`` allowed, run in this process with
    exactly the listed names defined (``FRAGMENT_NAMES`` says what each holds),
    on a migrated scratch database of their own. Everything else, imports
    included, the block must bring.
``<!-- readme-test: file PATH in PROJECT -->``
    Written to ``PATH`` in the project's folder.
``<!-- readme-test: pytest PATH in PROJECT -->``
    Written to ``PATH``; then ``pytest`` runs in the project's folder, and
    every test must pass, with no warning.
``<!-- readme-test: shell in PROJECT -->``
    Each line is a command, run with bash in the project's folder; each must
    exit 0. Two optional clauses, in this order: ``, each after "COMMAND"``
    runs ``COMMAND`` before each line (a block of alternatives, each run from
    the same state); ``, running "COMMAND" as "OTHER" because REASON`` runs
    ``OTHER`` where the block says ``COMMAND``.
``<!-- readme-test: not-run because REASON -->``
    Only where running is impossible here; the reason says why.

A project (``PROJECTS`` below) is a temporary folder prepared as its
function's docstring says, with a scratch database of its own; its blocks run
in README order, in one test. In every block, the README's example database
``app@db/app`` stands for the scratch database of the block or its project.
Commands run with this interpreter's scripts first on ``PATH`` (``alembic``,
``pytest``), ``AGENT_WAKE_TEST_DATABASE_URL`` naming the server this run
uses, and no other ``AGENT_WAKE_*`` or ``PYTEST_*`` variable of this run.
"""

import ast
import asyncio
import inspect
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tokenize
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import agent_wake
from agent_wake import WakeScheduleRepository, create_engine_and_session_factory
from agent_wake.testing import execute_autocommit, migrate_to_head
from agent_wake.testing.pytest_plugin import TEST_DATABASE_URL_VARIABLE, TestServer
from tests import host_project
from tests.conftest import ScratchDatabases
from tests.test_adoption import AGENT_A, AGENT_B, build_populated

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
EXAMPLE_DATABASE = "app@db/app"
COMMAND_TIMEOUT_SECONDS = 300
PACKAGE_VERSIONS = Path(agent_wake.__file__).parent / "migrations" / "versions"

# Reading the README.

_FENCE = re.compile(r"^(?P<indent> *)```(?P<language>\S*)\s*$")
_MARKER = re.compile(r"^\s*<!-- readme-test: (?P<how>.*?) -->\s*$")
_HOW = {
    "program": re.compile(r"program(?P<checks_output>, printing its comments)?"),
    "fragment": re.compile(r"fragment with (?P<names>\w+(?:, \w+)*)"),
    "file": re.compile(r"file (?P<path>\S+) in (?P<project>[\w-]+)"),
    "pytest": re.compile(r"pytest (?P<path>\S+) in (?P<project>[\w-]+)"),
    "shell": re.compile(
        r"shell in (?P<project>[\w-]+)"
        r'(?:, each after "(?P<after>[^"]+)")?'
        r'(?:, running "(?P<replaced>[^"]+)" as "(?P<replacement>[^"]+)" because .+)?'
    ),
    "not-run": re.compile(r"not-run because .+"),
}
_LANGUAGES = {"program": "python", "fragment": "python", "shell": "sh"}


@dataclass(frozen=True)
class How:
    """A block's marker, read."""

    kind: str
    project: str | None = None
    path: str | None = None
    names: tuple[str, ...] = ()
    checks_output: bool = False
    after: str | None = None
    replaced: str | None = None
    replacement: str | None = None


def read_marker(marker: str) -> How | None:
    """The marker's text after ``readme-test:``, read; None when it does not parse."""
    kind = marker.split(" ", 1)[0].rstrip(",")
    pattern = _HOW.get(kind)
    matched = pattern.fullmatch(marker) if pattern else None
    if matched is None:
        return None
    fields = matched.groupdict()
    return How(
        kind=kind,
        project=fields.get("project"),
        path=fields.get("path"),
        names=tuple(fields["names"].split(", ")) if fields.get("names") else (),
        checks_output=bool(fields.get("checks_output")),
        after=fields.get("after"),
        replaced=fields.get("replaced"),
        replacement=fields.get("replacement"),
    )


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence
    language: str
    text: str  # without the fence's indentation
    marker: str | None  # after "readme-test:"; None when the line before is no marker
    how: How | None  # None when there is no marker or it does not parse

    def __str__(self) -> str:
        return f"README.md line {self.line}"


def read_blocks(markdown: str) -> list[Block]:
    """Every fenced block, with the marker on the line before it."""
    lines = markdown.splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent = opening["indent"]
        closing = next((j for j in range(index + 1, len(lines)) if lines[j] == f"{indent}```"), None)
        if closing is None:
            raise AssertionError(f"README.md line {index + 1}: a fenced block that is never closed")
        found = _MARKER.match(lines[index - 1]) if index > 0 else None
        marker = found["how"] if found else None
        body = "".join(line.removeprefix(indent) + "\n" for line in lines[index + 1 : closing])
        blocks.append(Block(index + 1, opening["language"], body, marker, read_marker(marker) if marker else None))
        index = closing + 1
    return blocks


BLOCKS = read_blocks(README.read_text())


def blocks_of(kind: str) -> list[Any]:
    return [pytest.param(block, id=str(block)) for block in BLOCKS if block.how and block.how.kind == kind]


def project_blocks(project: str) -> list[tuple[Block, How]]:
    return [(block, block.how) for block in BLOCKS if block.how and block.how.project == project]


def named_projects() -> list[str]:
    return sorted({block.how.project for block in BLOCKS if block.how and block.how.project})


def command_of(line: str) -> str:
    """A shell line without its comment."""
    return re.sub(r"(^|\s+)#.*$", "", line).strip()


# The markers.


def test_every_block_says_how_it_runs() -> None:
    unmarked = [block.line for block in BLOCKS if block.marker is None]
    assert unmarked == [], f"README.md blocks with no <!-- readme-test: ... --> line before them, at lines {unmarked}"


def test_every_marker_reads_as_this_module_says() -> None:
    unreadable = [f"line {block.line}: {block.marker}" for block in BLOCKS if block.marker and block.how is None]
    assert unreadable == [], f"markers this module's docstring does not describe: {unreadable}"


def test_programs_fragments_and_shell_commands_are_in_blocks_of_their_language() -> None:
    mislabelled = [
        f"line {block.line}: a {block.how.kind} in a {block.language or 'plain'} block"
        for block in BLOCKS
        if block.how and block.language != _LANGUAGES.get(block.how.kind, block.language)
    ]
    assert mislabelled == []


def test_fragments_name_only_what_the_harness_defines() -> None:
    unknown = [
        f"line {block.line}: {name}"
        for block in BLOCKS
        if block.how
        for name in block.how.names
        if name not in FRAGMENT_NAMES
    ]
    assert unknown == [], f"names that FRAGMENT_NAMES does not define: {unknown}"


def test_a_command_run_as_another_is_in_its_block() -> None:
    # Otherwise the README's command would run as written: `pytest` in the checkout, the whole suite inside itself.
    missing = [
        f"line {block.line}: {block.how.replaced}"
        for block in BLOCKS
        if block.how and block.how.replaced
        if block.how.replaced not in map(command_of, block.text.splitlines())
    ]
    assert missing == [], f"shell markers running a command their block does not have: {missing}"


def test_the_projects_the_readme_names_are_the_projects_defined_here() -> None:
    assert named_projects() == sorted(PROJECTS)


def test_every_project_runs_something() -> None:
    idle = [name for name in PROJECTS if all(how.kind == "file" for _, how in project_blocks(name))]
    assert idle == [], f"projects whose blocks are only written, never run: {idle}"


# Running a block.


def for_database(text: str, database_url: str, *, ini: bool = False) -> str:
    """``text`` with the README's example database replaced by ``database_url``'s
    user, host and database (an ini file reads ``%`` as interpolation)."""
    target = make_url(database_url).render_as_string(hide_password=False).split("://", 1)[1]
    return text.replace(EXAMPLE_DATABASE, target.replace("%", "%%") if ini else target)


def reader_environment(server: TestServer) -> dict[str, str]:
    """A reader's shell: this interpreter's scripts first on PATH, the test
    server for pytest, nothing else of agent-wake's or of this pytest run."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("AGENT_WAKE_", "PYTEST_"))}
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    environment[TEST_DATABASE_URL_VARIABLE] = server.url
    return environment


def run(where: object, command: str, folder: Path, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with bash in ``folder``; fail, saying ``where``, unless it exits 0."""
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, (
        f"{where}: `{command}` exited {result.returncode} in {folder}\n"
        f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    )
    return result


def comments(source: str) -> list[str]:
    """Each comment of a Python block, without its ``#`` and its remark."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return [
        re.sub(r" {2,}\(.*\)$", "", token.string.removeprefix("#").strip())
        for token in tokens
        if token.type == tokenize.COMMENT
    ]


async def migrated_database(databases: ScratchDatabases) -> str:
    url = await databases.create()
    await asyncio.to_thread(migrate_to_head, url)
    return url


# Programs.


@pytest.mark.parametrize("block", blocks_of("program"))
async def test_the_program_runs(
    block: Block, scratch_databases: ScratchDatabases, wake_server: TestServer, tmp_path: Path
) -> None:
    url = await migrated_database(scratch_databases)
    program = tmp_path / f"readme_line_{block.line}.py"
    program.write_text(for_database(block.text, url))
    environment = {**reader_environment(wake_server), "AGENT_WAKE_DATABASE_URL": url}
    command = shlex.join([sys.executable, program.name])
    result = await asyncio.to_thread(run, block, command, tmp_path, environment)
    if block.how and block.how.checks_output:
        assert result.stdout.splitlines() == comments(block.text), f"{block} printed:\n{result.stdout}"


# Fragments: what a marker may name, and what each name holds while the fragment runs.

FRAGMENT_NAMES = {
    "sessions": "the session factory of create_engine_and_session_factory(), on the fragment's database",
    "session": "a session of `sessions` in a transaction, committed after the fragment",
    "now": "datetime.now(UTC), when one cron schedule is due",
    "cutoff": "90 days before now",
    "dispatch": "your dispatcher: `await dispatch(claim)` returns (output_text, latency_ms)",
}


async def dispatch(claim: Any) -> tuple[str, int]:
    return f"dispatched {claim.schedule_type}", 120


async def define_names(
    names: tuple[str, ...], sessions: async_sessionmaker[AsyncSession], stack: AsyncExitStack
) -> dict[str, Any]:
    now = datetime.now(UTC)
    if "now" in names:
        async with sessions.begin() as session:
            await WakeScheduleRepository(session).create(
                conversation_id=uuid.uuid4(),
                user_id=uuid.uuid4(),
                agent_id=uuid.uuid4(),
                schedule_type="cron",
                schedule_config={"expr": "0 * * * *"},
                next_fire_at=now - timedelta(minutes=1),
            )
    defined: dict[str, Any] = {
        "sessions": sessions,
        "now": now,
        "cutoff": now - timedelta(days=90),
        "dispatch": dispatch,
    }
    if "session" in names:
        defined["session"] = await stack.enter_async_context(sessions.begin())
    return {name: defined[name] for name in names}


@pytest.mark.parametrize("block", blocks_of("fragment"))
async def test_the_fragment_runs(block: Block, scratch_databases: ScratchDatabases) -> None:
    assert block.how is not None
    code = compile(block.text, str(block), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    engine, sessions = create_engine_and_session_factory(await migrated_database(scratch_databases))
    try:
        async with AsyncExitStack() as stack:
            namespace = {"__name__": "readme_fragment", **await define_names(block.how.names, sessions, stack)}
            result = eval(code, namespace)
            if inspect.iscoroutine(result):
                await result
    finally:
        await engine.dispose()


# Projects.


@dataclass
class Project:
    folder: Path
    database_url: str  # what the README's app@db/app stands for in this project
    environment: dict[str, str] = field(default_factory=dict)  # on top of the reader's


def copy_checkout(folder: Path) -> None:
    """The files a clone of this checkout has, with the changes not yet committed."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"copying the checkout needs git and a git work tree at {REPO}: {exc}")
    for name in listed.decode().split("\0"):
        if name and (REPO / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, folder / name)


def write_host_application(folder: Path) -> None:
    """What a host application has before the README's steps: its models
    (``host_models.py``), its tables revision ``host_0001`` (branch label
    ``host``) and Alembic's script template."""
    versions = folder / "migrations" / "versions"
    versions.mkdir(parents=True)
    (folder / "host_models.py").write_text(host_project.MODELS)
    (folder / "migrations" / "script.py.mako").write_text(host_project.SCRIPT_TEMPLATE)
    (versions / "host_0001.py").write_text(host_project.TABLES_REVISION)


def write_block(folder: Path, block: Block, path: str, database_url: str) -> None:
    target = folder / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(for_database(block.text, database_url, ini=target.suffix == ".ini"))


def write_readme_host_files(folder: Path, database_url: str) -> None:
    """Every file the README writes in the ``host`` project, in README order."""
    for block, how in project_blocks("host"):
        if how.path is not None:
            write_block(folder, block, how.path, database_url)


def write_host_revision(folder: Path, revision: str, down_revision: str, table: str, column: str, type_: str) -> None:
    """A host revision that adds ``column`` (``type_``, as SQLAlchemy source) to ``table``."""
    host_project.write_host_revision(
        folder,
        revision,
        down_revision,
        f'op.add_column("{table}", sa.Column("{column}", {type_}))',
        f'op.drop_column("{table}", "{column}")',
    )


async def prepare_checkout(work: Path, databases: ScratchDatabases, environment: dict[str, str]) -> Project:
    """A fresh copy of this checkout (git's files, uncommitted changes
    included), its package first on PYTHONPATH; an empty scratch database in
    ``AGENT_WAKE_DATABASE_URL``."""
    folder = work / "checkout"
    await asyncio.to_thread(copy_checkout, folder)
    url = await databases.create()
    return Project(folder, url, {"AGENT_WAKE_DATABASE_URL": url, "PYTHONPATH": str(folder / "src")})


async def prepare_checkout_on_a_host_database(
    work: Path, databases: ScratchDatabases, environment: dict[str, str]
) -> Project:
    """The checkout, on a database built by a host's history: the host
    application with the README's host files and ``host_0002``, upgraded to heads."""
    project = await prepare_checkout(work, databases, environment)
    host = work / "host"
    write_host_application(host)
    write_readme_host_files(host, project.database_url)
    write_host_revision(host, "host_0002", "host_0001", "conversations", "archived", "sa.Boolean(), nullable=True")
    await asyncio.to_thread(run, "building the host's database", "alembic upgrade heads", host, environment)
    return project


async def prepare_host(work: Path, databases: ScratchDatabases, environment: dict[str, str]) -> Project:
    """The host application (``write_host_application``); an empty scratch database."""
    write_host_application(work / "host")
    return Project(work / "host", await databases.create())


async def prepare_host_adopting(work: Path, databases: ScratchDatabases, environment: dict[str, str]) -> Project:
    """The host application with the README's host files and ``host_0002``;
    a database built by agent-wake on its own (stand-ins, ``agent_wake_0008``)."""
    folder = work / "host"
    url = await migrated_database(databases)
    write_host_application(folder)
    write_readme_host_files(folder, url)
    write_host_revision(folder, "host_0002", "host_0001", "conversations", "archived", "sa.Boolean(), nullable=True")
    return Project(folder, url)


async def prepare_host_moving(work: Path, databases: ScratchDatabases, environment: dict[str, str]) -> Project:
    """As ``host-adopting``, the database left by the old linear junction at
    ``host_0002`` after all of ours (``alembic_version`` holds that one row)."""
    project = await prepare_host_adopting(work, databases, environment)
    await execute_autocommit(project.database_url, "UPDATE alembic_version SET version_num = 'host_0002'")
    return project


OWN_ROWS_TEST = """
import pytest
from sqlalchemy import text

pytestmark = pytest.mark.asyncio


async def test_the_factories_write_the_hosts_own_rows(wake_factory):
    conversation = await wake_factory.conversation()
    skill = await wake_factory.skill()
    assert (conversation.workspace, skill.slug) == ("factory", "factory-skill")


async def test_wake_engine_empties_the_hosts_tables_too(wake_engine):
    async with wake_engine.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM conversations")) == 0
"""


async def prepare_host_own_rows(work: Path, databases: ScratchDatabases, environment: dict[str, str]) -> Project:
    """The host application with the README's host files, ``host_0002`` and
    ``host_0003`` giving its tables NOT NULL columns the stand-in rows lack
    (``conversations.workspace``, ``agent_skills.slug``), and
    ``test_own_rows.py`` using ``wake_factory.conversation()``, ``.skill()``
    and ``wake_engine``."""
    folder = work / "host"
    url = await databases.create()
    write_host_application(folder)
    write_readme_host_files(folder, url)
    write_host_revision(folder, "host_0002", "host_0001", "conversations", "workspace", "sa.Text(), nullable=False")
    write_host_revision(folder, "host_0003", "host_0002", "agent_skills", "slug", "sa.Text(), nullable=False")
    (folder / "test_own_rows.py").write_text(OWN_ROWS_TEST)
    return Project(folder, url)


async def prepare_older_runner(work: Path, databases: ScratchDatabases, environment: dict[str, str]) -> Project:
    """A deployment the older runner built with its own DDL, with rows: ``public``
    at step 4, two agent schemas at steps 2 and 6; ``AGENT_WAKE_DATABASE_URL`` names it."""
    folder = work / "deployment"
    folder.mkdir()
    url = await databases.create()
    for schema, step in (("public", 4), (AGENT_A, 2), (AGENT_B, 6)):
        await build_populated(url, schema, step)
    return Project(folder, url, {"AGENT_WAKE_DATABASE_URL": url})


PROJECTS: dict[str, Callable[[Path, ScratchDatabases, dict[str, str]], Awaitable[Project]]] = {
    "checkout": prepare_checkout,
    "checkout-on-a-host-database": prepare_checkout_on_a_host_database,
    "host": prepare_host,
    "host-adopting": prepare_host_adopting,
    "host-moving": prepare_host_moving,
    "host-own-rows": prepare_host_own_rows,
    "older-runner": prepare_older_runner,
}


def run_shell(block: Block, how: How, project: Project, environment: dict[str, str]) -> None:
    commands = [command_of(line) for line in for_database(block.text, project.database_url).splitlines()]
    assert how.replaced is None or how.replaced in commands, f"{block}: no command {how.replaced!r} to run as another"
    for command in filter(None, commands):
        if how.after is not None:
            run(block, how.after, project.folder, environment)
        run(block, how.replacement if command == how.replaced else command, project.folder, environment)


def run_pytest(block: Block, project: Project, environment: dict[str, str]) -> None:
    result = run(block, "pytest", project.folder, environment)
    summary = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"=* ?\d+ passed in [\d.]+s( \([\d:]+\))? =*", summary), (
        f"{block}: pytest in {project.folder} passed with more to say: {summary}\n{result.stdout[-4000:]}"
    )


@pytest.mark.parametrize("name", named_projects())
async def test_the_project_runs(
    name: str, scratch_databases: ScratchDatabases, wake_server: TestServer, tmp_path: Path
) -> None:
    reader = reader_environment(wake_server)
    project = await PROJECTS[name](tmp_path, scratch_databases, reader)
    environment = {**reader, **project.environment}
    package_versions = set(PACKAGE_VERSIONS.iterdir())
    try:
        for block, how in project_blocks(name):
            if how.path is not None:
                write_block(project.folder, block, how.path, project.database_url)
            if how.kind == "pytest":
                await asyncio.to_thread(run_pytest, block, project, environment)
            elif how.kind == "shell":
                await asyncio.to_thread(run_shell, block, how, project, environment)
    finally:
        written = set(PACKAGE_VERSIONS.iterdir()) - package_versions
        for path in written:
            path.unlink()
    assert written == set(), f"files written into the installed package, now removed: {sorted(written)}"
