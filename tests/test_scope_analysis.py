"""The scope analysis decides on SQL text alone, without a database: which
statements are confined to given conversations, under rules read from the
models. Each case names the rule of ``agent_wake._scope_analysis`` it shows."""

from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, Table, Text, UniqueConstraint

from agent_wake import _scope_analysis, partition_guard
from agent_wake._scope_analysis import ScopeRules, refusal
from agent_wake.models import PARTITION_COLUMN, WAKE_TABLES
from agent_wake.partition_guard import _RULES, GUARDED_TABLES, _scope_rules

CONVERSATION = "00000000-0000-0000-0000-00000000000a"
OTHER = "00000000-0000-0000-0000-00000000000b"

ALLOWED = [
    pytest.param("SELECT 1 FROM wake_fires WHERE conversation_id = $1", id="pinned_equal_to_a_bind"),
    pytest.param(
        f"SELECT 1 FROM agent_wake_schedules WHERE conversation_id = '{CONVERSATION}'",
        id="pinned_equal_to_a_constant",
    ),
    pytest.param(
        f"SELECT 1 FROM wake_fires WHERE '{CONVERSATION}'::uuid = conversation_id",
        id="pinned_with_the_value_on_the_left",
    ),
    pytest.param("SELECT 1 FROM wake_fires WHERE conversation_id IN ($1, $2)", id="pinned_in_a_list_of_values"),
    pytest.param(
        "SELECT 1 FROM wake_fires WHERE conversation_id = ANY(ARRAY[$1, $2]::uuid[])",
        id="pinned_equal_any_of_an_array_of_values",
    ),
    pytest.param("SELECT 1 FROM wake_fires WHERE conversation_id = ANY($1)", id="pinned_equal_any_of_a_bound_array"),
    pytest.param("SELECT 1 FROM wake_fires AS f WHERE f.conversation_id = $1", id="pinned_through_the_table_alias"),
    pytest.param("SELECT 1 FROM wake_fires WHERE wake_fires.conversation_id = $1", id="pinned_through_the_table_name"),
    pytest.param(
        "SELECT 1 FROM wake_fires WHERE conversation_id = $1 AND (status = 'fired' OR true)",
        id="or_beside_the_pin_in_a_top_level_and",
    ),
    pytest.param(
        "SELECT 1 FROM agent_wake_schedules s JOIN wake_fires f ON f.schedule_id = s.schedule_id "
        "WHERE s.conversation_id = $1 AND f.conversation_id = $1",
        id="every_joined_table_pinned_in_where",
    ),
    pytest.param(
        "SELECT 1 FROM agent_wake_schedules s WHERE s.conversation_id = $1 AND EXISTS "
        "(SELECT 1 FROM wake_fires f WHERE f.conversation_id = $1 AND f.schedule_id = s.schedule_id)",
        id="subquery_pinned_at_its_own_level",
    ),
    pytest.param(
        "SELECT 1 FROM (SELECT * FROM wake_fires WHERE conversation_id = $1) f", id="subquery_in_from_pinned_inside"
    ),
    pytest.param(
        "WITH mine AS (SELECT * FROM wake_fires WHERE conversation_id = $1) SELECT 1 FROM mine",
        id="cte_pinned_inside",
    ),
    pytest.param(
        "UPDATE agent_wake_schedules s SET name = 'x' FROM wake_fires f "
        "WHERE s.conversation_id = $1 AND f.conversation_id = $1 AND f.schedule_id = s.schedule_id",
        id="update_from_with_both_tables_pinned",
    ),
    pytest.param(
        "DELETE FROM wake_fires f USING agent_wake_schedules s "
        "WHERE f.conversation_id = $1 AND s.conversation_id = $1 AND s.schedule_id = f.schedule_id",
        id="delete_using_with_both_tables_pinned",
    ),
    pytest.param(
        "UPDATE wake_fires SET status = 'fired' WHERE conversation_id = $1", id="pinned_update_of_other_columns"
    ),
    pytest.param(
        "INSERT INTO wake_fires (conversation_id, fire_id, status) VALUES ($1, $2, 'fired')",
        id="insert_naming_conversation_id",
    ),
    pytest.param(
        "INSERT INTO wake_fires (conversation_id, fire_id, status) VALUES ($1, $2, 'fired') "
        "ON CONFLICT (conversation_id, fire_id) DO UPDATE SET output_text = 'retried'",
        id="upsert_on_a_target_including_conversation_id",
    ),
    pytest.param(
        "INSERT INTO wake_fires (conversation_id, fire_id, status) VALUES ($1, $2, 'fired') "
        "ON CONFLICT ON CONSTRAINT wake_fires_pkey DO UPDATE SET output_text = 'retried'",
        id="upsert_on_a_partitioned_constraint",
    ),
    pytest.param(
        "INSERT INTO wake_fires (conversation_id, fire_id, status) VALUES ($1, $2, 'fired') ON CONFLICT DO NOTHING",
        id="upsert_doing_nothing",
    ),
    pytest.param("SELECT 1 FROM wake_fires AS w WHERE w.conversation_id = $1", id="table_alias_without_column_names"),
    pytest.param(
        'SELECT 1 FROM public."wake_fires" WHERE conversation_id = $1', id="pinned_quoted_and_schema_qualified"
    ),
    pytest.param(
        "SELECT 1 FROM wake_fires WHERE conversation_id = $1; "
        "SELECT 1 FROM agent_wake_schedules WHERE conversation_id = $1",
        id="every_statement_of_a_batch_pinned",
    ),
    pytest.param("SELECT count(*) FROM conversations", id="other_tables_are_not_checked"),
    pytest.param("TRUNCATE conversations", id="truncate_of_other_tables"),
    pytest.param("COMMENT ON TABLE wake_fires IS 'one row per fire'", id="ddl_is_not_checked"),
    pytest.param("SELEC 1 FROM conversations", id="unparsable_text_naming_no_wake_table"),
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_allowed_statement_passes(sql: str) -> None:
    assert refusal(sql, _RULES) is None


REFUSED = [
    pytest.param("SELECT 1 FROM wake_fires", "wake_fires", "does not pin wake_fires.conversation_id", id="no_where"),
    pytest.param(
        "SELECT 1 FROM wake_fires WHERE conversation_id = $1 OR true",
        "wake_fires",
        "does not pin",
        id="or_around_the_pin",
    ),
    pytest.param(
        "SELECT 1 FROM wake_fires WHERE status = 'fired' AND (conversation_id = $1 OR conversation_id IS NOT NULL)",
        "wake_fires",
        "does not pin",
        id="pin_inside_an_or_inside_the_and",
    ),
    pytest.param(
        "SELECT 1 FROM wake_fires WHERE conversation_id <> $1", "wake_fires", "does not pin", id="pin_not_equal"
    ),
    pytest.param(
        "SELECT 1 FROM wake_fires WHERE conversation_id = conversation_id",
        "wake_fires",
        "does not pin",
        id="pin_compared_to_a_column",
    ),
    pytest.param(
        "SELECT 1 FROM wake_fires WHERE conversation_id IN (SELECT conversation_id FROM conversations)",
        "wake_fires",
        "does not pin",
        id="pin_in_a_subquery",
    ),
    pytest.param(
        "SELECT 1 FROM wake_fires WHERE conversation_id = ANY(SELECT conversation_id FROM conversations)",
        "wake_fires",
        "does not pin",
        id="pin_equal_any_of_a_subquery",
    ),
    pytest.param(
        "SELECT 1 FROM wake_fires WHERE conversation_id = ANY(ARRAY[$1, fire_id])",
        "wake_fires",
        "does not pin",
        id="pin_equal_any_of_an_array_with_a_column",
    ),
    pytest.param(
        "SELECT 1 FROM agent_wake_schedules s, wake_fires f "
        "WHERE s.conversation_id = $1 AND s.conversation_id = f.conversation_id",
        "wake_fires",
        "does not pin f.conversation_id",
        id="pin_on_another_table_only",
    ),
    pytest.param(
        "SELECT 1 FROM agent_wake_schedules s JOIN wake_fires f ON f.conversation_id = $1 WHERE s.conversation_id = $1",
        "wake_fires",
        "does not pin f.conversation_id",
        id="pin_only_in_join_on",
    ),
    pytest.param(
        "SELECT 1 FROM agent_wake_schedules s JOIN wake_fires f ON f.schedule_id = s.schedule_id "
        "WHERE conversation_id = $1",
        "wake_fires",
        "does not pin f.conversation_id",
        id="unqualified_pin_beside_two_tables",
    ),
    pytest.param(
        "SELECT 1 FROM agent_wake_schedules s WHERE s.conversation_id = $1 "
        "AND EXISTS (SELECT 1 FROM wake_fires f WHERE f.schedule_id = s.schedule_id)",
        "wake_fires",
        "does not pin f.conversation_id",
        id="subquery_not_pinned_at_its_own_level",
    ),
    pytest.param(
        "SELECT 1 FROM (SELECT * FROM wake_fires) f WHERE f.conversation_id = $1",
        "wake_fires",
        "does not pin",
        id="subquery_in_from_pinned_only_outside",
    ),
    pytest.param(
        "WITH all_fires AS (SELECT * FROM wake_fires) SELECT 1 FROM all_fires WHERE conversation_id = $1",
        "wake_fires",
        "does not pin",
        id="cte_pinned_only_outside",
    ),
    pytest.param(
        "WITH gone AS (DELETE FROM wake_fires RETURNING *) SELECT 1 FROM gone",
        "wake_fires",
        "does not pin",
        id="data_modifying_cte_not_pinned",
    ),
    pytest.param(
        "SELECT 1 FROM wake_fires WHERE conversation_id = $1 UNION ALL SELECT 1 FROM wake_fires",
        "wake_fires",
        "does not pin",
        id="union_branch_not_pinned",
    ),
    pytest.param(
        "UPDATE agent_wake_schedules s SET name = 'x' FROM wake_fires f "
        "WHERE s.conversation_id = $1 AND f.schedule_id = s.schedule_id",
        "wake_fires",
        "does not pin f.conversation_id",
        id="update_from_table_not_pinned",
    ),
    pytest.param(
        "DELETE FROM wake_fires f USING agent_wake_schedules s "
        "WHERE f.conversation_id = $1 AND s.schedule_id = f.schedule_id",
        "agent_wake_schedules",
        "does not pin s.conversation_id",
        id="delete_using_table_not_pinned",
    ),
    pytest.param(
        "UPDATE webhook_subscriptions SET name = 'x' WHERE name = 'y'",
        "webhook_subscriptions",
        "does not pin",
        id="update_not_pinned",
    ),
    pytest.param("DELETE FROM wake_fires", "wake_fires", "does not pin", id="delete_not_pinned"),
    pytest.param(
        "SELECT 1 FROM wake_fires TABLESAMPLE SYSTEM (100)", "wake_fires", "does not pin", id="tablesample_not_pinned"
    ),
    pytest.param(
        'SELECT 1 FROM U&"wake\\005ffires"', "wake_fires", "does not pin", id="unicode_escaped_name_not_pinned"
    ),
    pytest.param(
        "SELECT 1 FROM public.webhook_subscriptions",
        "webhook_subscriptions",
        "does not pin",
        id="schema_qualified_name_not_pinned",
    ),
    pytest.param(
        "SELECT 1 FROM wake_fires WHERE conversation_id = $1; SELECT 1 FROM wake_fires",
        "wake_fires",
        "does not pin",
        id="second_statement_of_a_batch_not_pinned",
    ),
    pytest.param(
        "INSERT INTO wake_fires (fire_id, status) VALUES ($1, 'fired')",
        "wake_fires",
        "an INSERT must name conversation_id",
        id="insert_without_conversation_id",
    ),
    pytest.param(
        "INSERT INTO wake_fires (conversation_id, fire_id, status) "
        "SELECT conversation_id, gen_random_uuid(), 'fired' FROM wake_fires",
        "wake_fires",
        "does not pin",
        id="insert_selecting_from_a_wake_table_not_pinned",
    ),
    pytest.param(
        f"UPDATE wake_fires SET conversation_id = '{OTHER}' WHERE conversation_id = $1",
        "wake_fires",
        "an UPDATE must not change conversation_id",
        id="update_setting_conversation_id",
    ),
    pytest.param(
        "INSERT INTO wake_fires (conversation_id, fire_id, status) VALUES ($1, $2, 'fired') "
        "ON CONFLICT (conversation_id, fire_id) DO UPDATE SET conversation_id = excluded.conversation_id",
        "wake_fires",
        "ON CONFLICT DO UPDATE must not change conversation_id",
        id="upsert_setting_conversation_id",
    ),
    pytest.param(
        "INSERT INTO wake_fires (conversation_id, fire_id, status) VALUES ($1, $2, 'fired') "
        "ON CONFLICT (fire_id) DO UPDATE SET output_text = 'overwritten'",
        "wake_fires",
        "needs a conflict target that includes conversation_id",
        id="upsert_on_an_id_only_target",
    ),
    pytest.param(
        "INSERT INTO wake_fires (conversation_id, fire_id, status) VALUES ($1, $2, 'fired') "
        "ON CONFLICT ON CONSTRAINT wake_fires_fire_id_key DO UPDATE SET output_text = 'overwritten'",
        "wake_fires",
        "needs a conflict target that includes conversation_id",
        id="upsert_on_an_id_only_constraint",
    ),
    pytest.param("TRUNCATE wake_fires", "wake_fires", "TRUNCATE spans every conversation", id="truncate"),
    pytest.param(
        "TRUNCATE conversations, agent_wake_schedules",
        "agent_wake_schedules",
        "TRUNCATE spans every conversation",
        id="truncate_among_other_tables",
    ),
    pytest.param("LOCK TABLE wake_fires", "wake_fires", "LOCK spans every conversation", id="lock"),
    pytest.param(
        "MERGE INTO wake_fires w USING (SELECT 1) s ON true WHEN MATCHED THEN DELETE",
        "wake_fires",
        "MERGE spans every conversation",
        id="merge",
    ),
    pytest.param(
        "EXPLAIN ANALYZE MERGE INTO wake_fires w USING (SELECT 1) s ON true WHEN MATCHED THEN DELETE",
        "wake_fires",
        "MERGE cannot be checked",
        id="merge_inside_explain",
    ),
    pytest.param(
        "PREPARE probe AS MERGE INTO wake_fires w USING (SELECT 1) s ON true WHEN MATCHED THEN DELETE",
        "wake_fires",
        "MERGE cannot be checked",
        id="merge_inside_prepare",
    ),
    pytest.param(
        "COPY wake_fires TO STDOUT", "wake_fires", "COPY of a whole table spans every conversation", id="copy_out"
    ),
    pytest.param(
        "COPY wake_fires FROM STDIN", "wake_fires", "COPY of a whole table spans every conversation", id="copy_in"
    ),
    pytest.param(
        "COPY (SELECT * FROM wake_fires) TO STDOUT", "wake_fires", "does not pin", id="copy_of_a_query_not_pinned"
    ),
    pytest.param(
        "EXPLAIN ANALYZE SELECT 1 FROM wake_fires", "wake_fires", "does not pin", id="explain_of_a_query_not_pinned"
    ),
    pytest.param("DECLARE c CURSOR FOR SELECT 1 FROM wake_fires", "wake_fires", "does not pin", id="cursor_not_pinned"),
    pytest.param(
        "CREATE TABLE copied AS SELECT * FROM wake_fires",
        "wake_fires",
        "does not pin",
        id="create_table_as_not_pinned",
    ),
    pytest.param(
        "DO $$BEGIN EXECUTE 'DELETE FROM wake' || '_fires'; END$$",
        "(any)",
        "a DO block cannot be checked",
        id="do_block",
    ),
    pytest.param("DO $$BEGIN PERFORM 1; END$$", "(any)", "a DO block cannot be checked", id="do_block_naming_nothing"),
    pytest.param(
        "SELECT query_to_xml('SELECT 1 FROM wake_fires', true, false, '')",
        "(any)",
        "query_to_xml() runs SQL the guard cannot see",
        id="query_to_xml",
    ),
    pytest.param(
        "SELECT table_to_xml(c.oid::regclass, true, false, '') FROM pg_class c WHERE relname = 'wake' || '_fires'",
        "(any)",
        "table_to_xml() runs SQL the guard cannot see",
        id="table_to_xml_of_a_name_built_at_run_time",
    ),
    pytest.param(
        "SELECT * FROM dblink('dbname=postgres', 'SELECT 1') AS t(x int)",
        "(any)",
        "dblink() runs SQL the guard cannot see",
        id="dblink_in_from",
    ),
    pytest.param(
        "SELEC 1 FROM wake_fires",
        "(unknown)",
        "cannot be parsed",
        id="unparsable_text_naming_a_wake_table",
    ),
    pytest.param(
        'SELEC 1 FROM U&"w\\0061ke_fires"',
        "(unknown)",
        "cannot be parsed",
        id="unparsable_text_with_a_unicode_escape",
    ),
    pytest.param(
        "SELECT 1 FROM wake_fires AS w(c0, c1, c2, c3, c4, c5, conversation_id) WHERE w.conversation_id = $1",
        "wake_fires",
        "an alias may not rename the columns",
        id="column_alias_renaming_conversation_id",
    ),
    pytest.param(
        "SELECT 1 FROM wake_fires w WHERE w.conversation_id = $1 AND EXISTS "
        "(SELECT 1 FROM wake_fires AS f(x) WHERE conversation_id = $1)",
        "wake_fires",
        "an alias may not rename the columns",
        id="column_alias_in_a_subquery",
    ),
]


@pytest.mark.parametrize(("sql", "table", "problem"), REFUSED)
def test_refused_statement_names_its_table_and_problem(sql: str, table: str, problem: str) -> None:
    found = refusal(sql, _RULES)
    assert found is not None, "allowed"
    assert found.table == table
    assert problem in found.problem


def test_the_guarded_tables_are_the_wake_tables_of_the_models() -> None:
    assert {table.name for table in WAKE_TABLES} == GUARDED_TABLES


def test_the_partitioned_constraints_are_the_wake_tables_keys_that_contain_the_partition_column() -> None:
    # The UNIQUE (id) constraints are left out: they do not contain conversation_id.
    assert _RULES.partitioned_constraints == {
        "agent_wake_schedules_pkey",
        "wake_fires_pkey",
        "webhook_subscriptions_pkey",
    }


def _notes_table() -> Table:
    return Table(
        "wake_notes",
        MetaData(),
        Column(PARTITION_COLUMN, Text),
        Column("note_id", Text),
        PrimaryKeyConstraint(PARTITION_COLUMN, "note_id", name="wake_notes_pkey"),
        UniqueConstraint("note_id", name="wake_notes_note_id_key"),
    )


def test_a_table_added_to_the_rules_is_guarded() -> None:
    rules = _scope_rules((*WAKE_TABLES, _notes_table()), PARTITION_COLUMN)
    found = refusal("SELECT 1 FROM wake_notes", rules)
    assert found is not None
    assert found.table == "wake_notes"


def test_a_table_added_to_the_rules_brings_its_partitioned_key_as_a_conflict_target() -> None:
    rules = _scope_rules((*WAKE_TABLES, _notes_table()), PARTITION_COLUMN)
    upsert = (
        "INSERT INTO wake_notes (conversation_id, note_id) VALUES ($1, $2) "
        "ON CONFLICT ON CONSTRAINT {} DO UPDATE SET note_id = excluded.note_id"
    )
    assert refusal(upsert.format("wake_notes_pkey"), rules) is None
    assert refusal(upsert.format("wake_notes_note_id_key"), rules) is not None


def test_the_partition_column_is_the_one_the_rules_name() -> None:
    rules = ScopeRules(tables=frozenset({"notes"}), partition_column="tenant_id", partitioned_constraints=frozenset())
    assert refusal("SELECT 1 FROM notes WHERE tenant_id = $1", rules) is None
    assert refusal("SELECT 1 FROM notes WHERE conversation_id = $1", rules) is not None


def test_the_analysis_and_the_guard_write_no_wake_table_name() -> None:
    for module in (_scope_analysis, partition_guard):
        source = Path(str(module.__file__)).read_text()
        named = {table.name for table in WAKE_TABLES if table.name in source}
        assert not named, f"{module.__name__} names {named}; take them from agent_wake.models"


def test_a_repeated_statement_is_decided_from_the_cache() -> None:
    sql = "SELECT 1 FROM wake_fires WHERE conversation_id = $1 AND status = 'cache probe'"
    refusal(sql, _RULES)
    hits = refusal.cache_info().hits
    refusal(sql, _RULES)
    assert refusal.cache_info().hits == hits + 1
