"""Where the database comes from: resolve_database_url and the engine factory,
and the embedded PostgreSQL starting only where a person asked for it."""

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command

from agent_wake import InvalidInputError, alembic_config, create_engine_and_session_factory, resolve_database_url

REPO = Path(__file__).resolve().parent.parent
SERVICE_URL = "postgresql://app:s3cret@db.internal:5432/app"


@pytest.fixture
def unconfigured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No database configured, in an empty working directory (where the embedded server would put its data)."""
    for variable in ("AGENT_WAKE_DATABASE_URL", "AGENT_WAKE_EMBEDDED", "AGENT_WAKE_EMBEDDED_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def embedded_folder() -> Iterator[Path]:
    """A data folder for the embedded server, outside pytest's tmp_path (test_embedded_server says why)."""
    parent = Path(tempfile.mkdtemp(prefix="agent-wake-embedded-"))
    yield parent / "pgdata"
    shutil.rmtree(parent, ignore_errors=True)


def _environment_without_configuration(**settings: str) -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("AGENT_WAKE_DATABASE_URL", "AGENT_WAKE_EMBEDDED", "AGENT_WAKE_EMBEDDED_DIR")
    }
    return {**environment, **settings}


def test_without_a_url_resolution_is_refused_naming_the_variable_and_how_to_opt_in(unconfigured: Path) -> None:
    with pytest.raises(InvalidInputError) as refused:
        resolve_database_url()
    assert refused.value.field == "AGENT_WAKE_DATABASE_URL"
    assert "AGENT_WAKE_EMBEDDED=1" in refused.value.rule
    assert "allow_embedded=True" in refused.value.rule


def test_a_service_without_a_url_fails_at_engine_creation_and_starts_nothing(unconfigured: Path) -> None:
    with pytest.raises(InvalidInputError, match="AGENT_WAKE_DATABASE_URL"):
        create_engine_and_session_factory()
    assert list(unconfigured.iterdir()) == []


def test_an_empty_variable_counts_as_unset(unconfigured: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_WAKE_DATABASE_URL", "")
    with pytest.raises(InvalidInputError) as refused:
        resolve_database_url()
    assert refused.value.field == "AGENT_WAKE_DATABASE_URL"


def test_the_variable_is_used_when_no_url_is_given(unconfigured: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_WAKE_DATABASE_URL", SERVICE_URL)
    assert resolve_database_url() == "postgresql+asyncpg://app:s3cret@db.internal:5432/app"


def test_a_given_url_wins_over_the_variable(unconfigured: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_WAKE_DATABASE_URL", SERVICE_URL)
    assert resolve_database_url("postgresql://other@elsewhere/other") == "postgresql+asyncpg://other@elsewhere/other"


def test_a_configured_url_wins_over_every_permission_to_embed(
    unconfigured: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_WAKE_DATABASE_URL", SERVICE_URL)
    monkeypatch.setenv("AGENT_WAKE_EMBEDDED", "1")
    assert resolve_database_url(allow_embedded=True) == "postgresql+asyncpg://app:s3cret@db.internal:5432/app"
    assert list(unconfigured.iterdir()) == []


@pytest.mark.parametrize(
    ("given", "resolved"),
    [
        ("postgresql://app@db/app", "postgresql+asyncpg://app@db/app"),
        ("postgres://app:pw@db:6543/app", "postgresql+asyncpg://app:pw@db:6543/app"),
        ("postgresql+psycopg://app@db/app?sslmode=require", "postgresql+asyncpg://app@db/app?sslmode=require"),
        (
            "postgresql+asyncpg://app@/app?host=/run/postgresql",
            "postgresql+asyncpg://app@/app?host=%2Frun%2Fpostgresql",
        ),
    ],
)
def test_any_postgresql_url_gets_the_asyncpg_driver_and_keeps_the_rest(given: str, resolved: str) -> None:
    assert resolve_database_url(given) == resolved


def test_a_url_of_another_database_is_refused_naming_the_argument() -> None:
    with pytest.raises(InvalidInputError) as refused:
        resolve_database_url("mysql+pymysql://app:s3cret@db/app")
    assert refused.value.field == "url"
    assert refused.value.rule == "must be a PostgreSQL URL (postgresql://...), got the scheme 'mysql+pymysql'"


def test_a_url_of_another_database_in_the_variable_is_refused_naming_the_variable(
    unconfigured: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_WAKE_DATABASE_URL", "sqlite:///wake.db")
    with pytest.raises(InvalidInputError) as refused:
        resolve_database_url()
    assert refused.value.field == "AGENT_WAKE_DATABASE_URL"


@pytest.mark.parametrize("given", ["s3cret", "postgresql://app:s3cret@db:port-s3cret/app"])
def test_a_string_that_is_not_a_url_is_refused_without_repeating_it(given: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        resolve_database_url(given)
    assert refused.value.field == "url"
    assert "s3cret" not in str(refused.value)
    assert refused.value.__cause__ is None
    assert refused.value.__suppress_context__


def test_agent_wake_embedded_takes_only_1_or_0(unconfigured: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_WAKE_EMBEDDED", "true")
    with pytest.raises(InvalidInputError) as refused:
        resolve_database_url()
    assert refused.value.field == "AGENT_WAKE_EMBEDDED"
    assert refused.value.rule == "must be 1 (allow the embedded PostgreSQL) or 0 (do not)"


def test_agent_wake_embedded_0_does_not_allow_the_embedded_server(
    unconfigured: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_WAKE_EMBEDDED", "0")
    with pytest.raises(InvalidInputError) as refused:
        resolve_database_url()
    assert refused.value.field == "AGENT_WAKE_DATABASE_URL"
    assert list(unconfigured.iterdir()) == []


# A service's engine on whatever the resolution gives, asked for the server's data folder.
_SERVICE = """
import asyncio, sys
from sqlalchemy import text
from agent_wake import create_engine_and_session_factory

async def main() -> None:
    engine, _ = create_engine_and_session_factory(allow_embedded=sys.argv[1] == "keyword")
    async with engine.connect() as connection:
        print(await connection.scalar(text("SHOW data_directory")))
    await engine.dispose()

asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("asked_by", "settings"),
    [("keyword", {}), ("environment", {"AGENT_WAKE_EMBEDDED": "1"})],
)
def test_asking_for_the_embedded_server_starts_it_in_the_embedded_folder(
    embedded_folder: Path, tmp_path: Path, asked_by: str, settings: dict[str, str]
) -> None:
    service = subprocess.run(
        [sys.executable, "-c", _SERVICE, asked_by],
        env=_environment_without_configuration(AGENT_WAKE_EMBEDDED_DIR=str(embedded_folder), **settings),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert service.returncode == 0, service.stderr
    assert service.stdout.strip() == str(embedded_folder)


def test_the_quick_start_alembic_upgrade_head_in_a_checkout_runs_on_the_embedded_server(
    embedded_folder: Path, tmp_path: Path
) -> None:
    upgrade = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), "upgrade", "head"],
        env=_environment_without_configuration(AGENT_WAKE_EMBEDDED_DIR=str(embedded_folder)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    assert "Running upgrade" in upgrade.stderr
    assert (embedded_folder / "PG_VERSION").exists()


def test_the_packaged_alembic_environment_refuses_to_run_without_a_url(unconfigured: Path) -> None:
    with pytest.raises(InvalidInputError) as refused:
        command.upgrade(alembic_config(), "head")
    assert refused.value.field == "AGENT_WAKE_DATABASE_URL"
    assert list(unconfigured.iterdir()) == []
