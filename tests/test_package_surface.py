"""What importing and type-checking the package gives a service."""

import subprocess
import sys
import textwrap
from pathlib import Path

from mypy import api as mypy_api


def test_importing_the_package_loads_neither_alembic_nor_mako() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, agent_wake; print(sorted(m for m in ('alembic', 'mako') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"


def test_alembic_config_still_builds_a_config_on_demand() -> None:
    from agent_wake import WAKE_VERSIONS, alembic_config

    config = alembic_config("postgresql://example/db")
    assert WAKE_VERSIONS in (config.get_main_option("version_locations") or "")
    assert config.attributes["url"] == "postgresql://example/db"


def test_mypy_refuses_an_update_of_an_unknown_field_or_a_wrong_type(tmp_path: Path) -> None:
    service = tmp_path / "service.py"
    service.write_text(
        textwrap.dedent(
            """
            import uuid
            from agent_wake import WakeScheduleRepository

            async def rename(repository: WakeScheduleRepository, c: uuid.UUID, s: uuid.UUID) -> None:
                await repository.update(c, s, name="fine", include_conversation_history=False)
                await repository.update(c, s, status="paused")
                await repository.update(c, s, name=42)
            """
        )
    )
    report, _, status = mypy_api.run(
        [str(service), "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache")]
    )
    errors = [line for line in report.splitlines() if ": error:" in line]
    assert status == 1
    assert [line.split(":")[1] for line in errors] == ["7", "8"], report
    assert '"status"' in errors[0]
    assert '"name"' in errors[1]
