"""agent-wake in a host application's Alembic history: a host project written
into a temporary folder (its own tables revision, models and env.py; our
branch in its version_locations; the root junction revision), run with the
`alembic` command as its developers would."""

import re
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import ScratchDatabases
from tests.host_project import UPSTREAM_REVISION, write_host_project, write_host_revision
from tests.test_migrations import UPSTREAM_TABLES, WAKE_TABLES, alembic, alembic_refused, tables, versions

PACKAGE_VERSIONS = Path(__file__).resolve().parent.parent / "src" / "agent_wake" / "migrations" / "versions"

# A host revision after its tables revision: a column on the host's own table.
ADD_ARCHIVED = 'op.add_column("conversations", sa.Column("archived", sa.Boolean(), nullable=True))'
DROP_ARCHIVED = 'op.drop_column("conversations", "archived")'

SKILL_ID = "00000000-0000-0000-0000-00000000005c"
CONVERSATION_ID = "00000000-0000-0000-0000-0000000000c1"


def host_alembic(folder: Path, url: str, *args: str) -> str:
    """Run `alembic` in the host project; its env.py reads `-x url=`."""
    return alembic("-x", f"url={url}", *args, url=url, cwd=folder).stdout


async def execute(url: str, *statements: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def scalars(url: str, query: str) -> list[object]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return list((await connection.execute(text(query))).scalars())
    finally:
        await engine.dispose()


async def add_host_and_wake_rows(url: str) -> None:
    """A host conversation and skill, and a schedule of ours that refers to the skill."""
    await execute(
        url,
        f"INSERT INTO conversations (agent_id, conversation_id, user_id) "
        f"VALUES (gen_random_uuid(), '{CONVERSATION_ID}', gen_random_uuid())",
        f"INSERT INTO agent_skills (agent_id, skill_id, user_id, name) "
        f"VALUES (gen_random_uuid(), '{SKILL_ID}', gen_random_uuid(), 'kept')",
        f"INSERT INTO agent_wake_schedules (conversation_id, schedule_id, user_id, agent_id, skill_id, schedule_type) "
        f"VALUES ('{CONVERSATION_ID}', gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), '{SKILL_ID}', 'cron')",
    )


async def conversation_columns(url: str) -> set[object]:
    return set(
        await scalars(url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'conversations'")
    )


def package_versions() -> set[str]:
    return {path.name for path in PACKAGE_VERSIONS.iterdir()}


def written_into_the_package(before: set[str]) -> set[str]:
    """Files that appeared in our versions folder since ``before``, removed
    again so that a failing test leaves the checkout as it was."""
    written = package_versions() - before
    for name in written:
        (PACKAGE_VERSIONS / name).unlink()
    return written


async def test_a_host_history_has_two_heads_and_upgrade_heads_builds_every_table(
    scratch_databases: ScratchDatabases, tmp_path: Path
) -> None:
    url = await scratch_databases.create()
    write_host_project(tmp_path)
    heads = host_alembic(tmp_path, url, "heads")
    assert re.findall(r"^(\w+)", heads, re.MULTILINE) == ["host_0001", "agent_wake_0008"]
    host_alembic(tmp_path, url, "upgrade", "heads")
    assert await tables(url) == WAKE_TABLES | UPSTREAM_TABLES
    assert "title" in await conversation_columns(url)  # the host's own table, not the stand-in


async def test_our_revisions_need_no_conversations_table(scratch_databases: ScratchDatabases, tmp_path: Path) -> None:
    url = await scratch_databases.create()
    write_host_project(tmp_path)
    tables_revision = tmp_path / "migrations" / "versions" / "host_0001.py"
    tables_revision.write_text(
        tables_revision.read_text()
        .replace('op.create_table(\n        "conversations",', 'op.create_table(\n        "host_threads",')
        .replace('op.drop_table("conversations")', 'op.drop_table("host_threads")')
    )
    host_alembic(tmp_path, url, "upgrade", "heads")
    assert await tables(url) == WAKE_TABLES | {"agent_skills", "host_threads"}


async def test_our_revisions_are_refused_when_agent_skills_skill_id_is_not_unique(
    scratch_databases: ScratchDatabases, tmp_path: Path
) -> None:
    url = await scratch_databases.create()
    write_host_project(tmp_path)
    tables_revision = tmp_path / "migrations" / "versions" / "host_0001.py"
    tables_revision.write_text(
        tables_revision.read_text().replace('sa.UniqueConstraint("skill_id", name="agent_skills_skill_id_key"),', "")
    )
    refused = alembic_refused("-x", f"url={url}", "upgrade", "heads", url=url, cwd=tmp_path)
    assert 'there is no unique constraint matching given keys for referenced table "agent_skills"' in refused
    assert await tables(url) == set()  # the host's env.py runs the upgrade in one transaction


async def test_plain_upgrade_head_is_refused_in_a_host_and_writes_nothing(
    scratch_databases: ScratchDatabases, tmp_path: Path
) -> None:
    url = await scratch_databases.create()
    write_host_project(tmp_path)
    refused = alembic_refused("-x", f"url={url}", "upgrade", "head", url=url, cwd=tmp_path)
    assert "Multiple head revisions are present" in refused
    assert await tables(url) == set()


async def test_alembic_check_in_a_host_finds_no_difference(scratch_databases: ScratchDatabases, tmp_path: Path) -> None:
    url = await scratch_databases.create()
    write_host_project(tmp_path)
    host_alembic(tmp_path, url, "upgrade", "heads")
    assert "No new upgrade operations detected" in host_alembic(tmp_path, url, "check")


async def test_autogenerate_in_a_host_proposes_its_own_changes_and_nothing_about_the_wake_tables(
    scratch_databases: ScratchDatabases, tmp_path: Path
) -> None:
    url = await scratch_databases.create()
    write_host_project(tmp_path)
    host_alembic(tmp_path, url, "upgrade", "heads")
    models = tmp_path / "host_models.py"
    models.write_text(
        models.read_text().replace(
            "    title: Mapped[str]",
            "    archived: Mapped[bool | None] = mapped_column(Boolean)\n    title: Mapped[str]",
        )
    )
    host_alembic(tmp_path, url, "revision", "--autogenerate", "-m", "archive", "--head", "host@head")
    (generated,) = (tmp_path / "migrations" / "versions").glob("*_archive.py")
    source = generated.read_text()
    assert "op.add_column('conversations', sa.Column('archived'" in source
    for name in [*WAKE_TABLES, "idx_", "agent_skills"]:
        assert name not in source


async def test_a_new_revision_without_a_head_is_refused_and_nothing_lands_in_the_package(
    scratch_databases: ScratchDatabases, tmp_path: Path
) -> None:
    url = await scratch_databases.create()
    write_host_project(tmp_path)
    before = package_versions()
    try:
        refused = alembic_refused("-x", f"url={url}", "revision", "-m", "mine", url=url, cwd=tmp_path)
    finally:
        written = written_into_the_package(before)
    assert written == set()
    assert "Multiple heads are present" in refused
    assert not list((tmp_path / "migrations" / "versions").glob("*_mine.py"))


async def test_a_new_revision_on_the_host_head_lands_in_the_host_folder(
    scratch_databases: ScratchDatabases, tmp_path: Path
) -> None:
    url = await scratch_databases.create()
    write_host_project(tmp_path)
    before = package_versions()
    host_alembic(tmp_path, url, "revision", "-m", "mine", "--head", "host@head")
    assert written_into_the_package(before) == set()
    (written,) = (tmp_path / "migrations" / "versions").glob("*_mine.py")
    assert "down_revision = 'host_0001'" in written.read_text()


async def test_downgrading_our_branch_to_base_drops_only_the_wake_tables(
    scratch_databases: ScratchDatabases, tmp_path: Path
) -> None:
    url = await scratch_databases.create()
    write_host_project(tmp_path)
    write_host_revision(tmp_path, "host_0002", "host_0001", ADD_ARCHIVED, DROP_ARCHIVED)
    host_alembic(tmp_path, url, "upgrade", "heads")
    await add_host_and_wake_rows(url)
    host_alembic(tmp_path, url, "downgrade", "agent_wake@base")
    assert await tables(url) == UPSTREAM_TABLES
    assert "archived" in await conversation_columns(url)  # host_0002 was not reverted
    assert await scalars(url, "SELECT name FROM agent_skills") == ["kept"]
    assert await versions(url) == {"host_0002"}


async def test_downgrading_to_the_junction_reverts_only_our_revisions(
    scratch_databases: ScratchDatabases, tmp_path: Path
) -> None:
    url = await scratch_databases.create()
    write_host_project(tmp_path)
    write_host_revision(tmp_path, "host_0002", "host_0001", ADD_ARCHIVED, DROP_ARCHIVED)
    host_alembic(tmp_path, url, "upgrade", "heads")
    host_alembic(tmp_path, url, "downgrade", "agent_wake_upstream")
    assert await tables(url) == UPSTREAM_TABLES
    assert "archived" in await conversation_columns(url)
    assert await versions(url) == {"host_0002", "agent_wake_upstream"}


async def test_downgrading_the_host_below_its_tables_takes_our_branch_down_first(
    scratch_databases: ScratchDatabases, tmp_path: Path
) -> None:
    url = await scratch_databases.create()
    write_host_project(tmp_path)
    host_alembic(tmp_path, url, "upgrade", "heads")
    host_alembic(tmp_path, url, "downgrade", "host@base")
    assert await tables(url) == set()
    assert await versions(url) == set()


async def test_a_standalone_database_is_adopted_by_a_host_that_runs_only_its_later_revisions(
    scratch_databases: ScratchDatabases, tmp_path: Path
) -> None:
    url = await scratch_databases.create()
    alembic("upgrade", "head", url=url)  # our checkout: stand-in tables, agent_wake_0008
    await add_host_and_wake_rows(url)
    write_host_project(tmp_path)
    write_host_revision(tmp_path, "host_0002", "host_0001", ADD_ARCHIVED, DROP_ARCHIVED)
    # agent_wake_0008 depends on host_0001 through the junction: Alembic
    # counts host_0001 as applied and runs host_0002 only.
    host_alembic(tmp_path, url, "upgrade", "heads")
    assert await versions(url) == {"host_0002", "agent_wake_0008"}
    assert "archived" in await conversation_columns(url)
    assert await scalars(url, "SELECT name FROM agent_skills") == ["kept"]
    assert await scalars(url, "SELECT skill_id::text FROM agent_wake_schedules") == [SKILL_ID]


async def test_a_standalone_database_already_at_a_later_host_revision_is_adopted_by_stamping_it(
    scratch_databases: ScratchDatabases, tmp_path: Path
) -> None:
    url = await scratch_databases.create()
    alembic("upgrade", "head", url=url)
    await execute(url, "ALTER TABLE conversations ADD COLUMN archived boolean")  # what host_0002 does
    await add_host_and_wake_rows(url)
    write_host_project(tmp_path)
    write_host_revision(tmp_path, "host_0002", "host_0001", ADD_ARCHIVED, DROP_ARCHIVED)
    host_alembic(tmp_path, url, "stamp", "--purge", "host_0002", "agent_wake_0008")
    host_alembic(tmp_path, url, "upgrade", "heads")
    assert await versions(url) == {"host_0002", "agent_wake_0008"}
    assert await scalars(url, "SELECT skill_id::text FROM agent_wake_schedules") == [SKILL_ID]


async def test_after_adoption_a_host_check_shows_only_how_the_stand_ins_differ_from_its_models(
    scratch_databases: ScratchDatabases, tmp_path: Path
) -> None:
    url = await scratch_databases.create()
    alembic("upgrade", "head", url=url)
    write_host_project(tmp_path)
    refused = alembic_refused("-x", f"url={url}", "check", url=url, cwd=tmp_path)
    # The stand-in conversations has no `title`, which the host's model has.
    assert "[('add_column', None, 'conversations', Column('title'" in refused
    for name in [*WAKE_TABLES, "idx_"]:
        assert name not in refused


async def test_a_host_database_runs_standalone_once_stamped_at_our_head(
    scratch_databases: ScratchDatabases, tmp_path: Path
) -> None:
    url = await scratch_databases.create()
    write_host_project(tmp_path)
    write_host_revision(tmp_path, "host_0002", "host_0001", ADD_ARCHIVED, DROP_ARCHIVED)
    host_alembic(tmp_path, url, "upgrade", "heads")
    await add_host_and_wake_rows(url)
    assert "Can't locate revision identified by 'host_0002'" in alembic_refused("upgrade", "head", url=url)
    alembic("stamp", "--purge", "agent_wake_0008", url=url)  # our checkout
    alembic("upgrade", "head", url=url)
    assert await versions(url) == {"agent_wake_0008"}
    assert await tables(url) == WAKE_TABLES | UPSTREAM_TABLES
    assert {"title", "archived"} <= await conversation_columns(url)
    assert await scalars(url, "SELECT skill_id::text FROM agent_wake_schedules") == [SKILL_ID]


# What the README said before: the junction's parent is the host's tables
# revision, so one linear history runs host_0001, our branch, then host
# revisions written after ours.
OLD_UPSTREAM_REVISION = """
revision = "agent_wake_upstream"
down_revision = "host_0001"
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
"""


async def moved_from_the_old_junction(url: str, folder: Path) -> None:
    """A host built on the old linear junction, with host_0002 after our
    agent_wake_0007, moved to the new shape as the README says."""
    write_host_project(folder)
    versions_folder = folder / "migrations" / "versions"
    (versions_folder / "agent_wake_upstream.py").write_text(OLD_UPSTREAM_REVISION)
    write_host_revision(folder, "host_0002", "agent_wake_0007", ADD_ARCHIVED, DROP_ARCHIVED)
    # Built when agent_wake_0007 was our newest revision: agent_wake_0008 now branches off beside host_0002.
    host_alembic(folder, url, "upgrade", "host_0002")
    assert await versions(url) == {"host_0002"}
    await add_host_and_wake_rows(url)

    (versions_folder / "agent_wake_upstream.py").write_text(UPSTREAM_REVISION)
    write_host_revision(folder, "host_0002", "host_0001", ADD_ARCHIVED, DROP_ARCHIVED)
    host_alembic(folder, url, "stamp", "--purge", "host_0002", "agent_wake_0007")


async def test_a_host_on_the_old_linear_junction_moves_to_the_new_shape_with_its_data(
    scratch_databases: ScratchDatabases, tmp_path: Path
) -> None:
    url = await scratch_databases.create()
    await moved_from_the_old_junction(url, tmp_path)
    host_alembic(tmp_path, url, "upgrade", "heads")
    assert await versions(url) == {"host_0002", "agent_wake_0008"}
    assert await tables(url) == WAKE_TABLES | UPSTREAM_TABLES
    assert "archived" in await conversation_columns(url)
    assert await scalars(url, "SELECT skill_id::text FROM agent_wake_schedules") == [SKILL_ID]


async def test_after_the_move_removing_our_branch_keeps_the_host_revisions_after_it(
    scratch_databases: ScratchDatabases, tmp_path: Path
) -> None:
    url = await scratch_databases.create()
    await moved_from_the_old_junction(url, tmp_path)
    host_alembic(tmp_path, url, "downgrade", "agent_wake@base")
    assert await tables(url) == UPSTREAM_TABLES
    assert "archived" in await conversation_columns(url)
    assert await versions(url) == {"host_0002"}
