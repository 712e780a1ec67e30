"""The scope analysis decides on SQL text alone, without a database: which
statements are confined to given conversations, under rules read from the
models. Each case names the rule of ``agent_wake._scope_analysis`` it shows."""

from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, Table, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect

from agent_wake import _scope_analysis, partition_guard
from agent_wake._scope_analysis import Decision, ScopeRules, decide, reading_depends_on_settings, refusal
from agent_wake._statements import PREBUILT
from agent_wake.models import PARTITION_COLUMN, WAKE_TABLES
from agent_wake.partition_guard import _RULES, GUARDED_TABLES, _scope_rules

CONVERSATION = "00000000-0000-0000-0000-00000000000a"
OTHER = "00000000-0000-0000-0000-00000000000b"
AGENT_SCHEMA = "agent_0123456789abcdef0123456789abcdef"
# A built-in that runs SQL given as text, to hide in every place an expression can sit.
RUNS_SQL = "query_to_xml('SELECT * FROM wake_fires', true, false, '')"

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
    pytest.param(
        "SELECT 1 FROM wake_fires WHERE conversation_id OPERATOR(pg_catalog.=) $1",
        id="pinned_with_pg_catalogs_equals_written_out",
    ),
    pytest.param(
        "SELECT 1 FROM public.wake_fires WHERE public.wake_fires.conversation_id = $1",
        id="pinned_by_schema_table_and_column_on_an_entry_of_that_schema",
    ),
    pytest.param(
        f"SELECT 1 FROM {AGENT_SCHEMA}.wake_fires WHERE wake_fires.conversation_id = $1",
        id="pinned_by_table_name_on_an_entry_of_an_agent_schema",
    ),
    pytest.param(
        "SELECT 1 FROM public.wake_fires, pg_temp.wake_fires "
        "WHERE public.wake_fires.conversation_id = $1 AND pg_temp.wake_fires.conversation_id = $1",
        id="two_entries_of_one_name_each_pinned_by_its_schema",
    ),
    pytest.param(
        "SELECT 1 FROM wake_fires f JOIN agent_wake_schedules s USING (schedule_id) AS j "
        "WHERE f.conversation_id = $1 AND s.conversation_id = $1",
        id="a_join_using_alias_hides_no_table",
    ),
    pytest.param(
        f"CREATE VIEW mine AS SELECT * FROM wake_fires WHERE conversation_id = '{CONVERSATION}'",
        id="a_view_of_one_conversation",
    ),
    pytest.param(
        "PREPARE p(uuid) AS SELECT 1 FROM wake_fires WHERE conversation_id = $1", id="prepare_of_a_pinned_query"
    ),
    pytest.param(
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 FROM conversations $$",
        id="function_body_naming_no_wake_table",
    ),
    pytest.param("ANALYZE wake_fires", id="analyze_without_reading_the_statistics"),
    pytest.param("SELECT 1 FROM conversations WHERE name = 'dblink'", id="function_names_inside_string_constants"),
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
        "agent_wake_schedules",
        "does not pin s.conversation_id",
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
        "MERGE cannot be checked",
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
        "query_to_xml() runs SQL or returns rows the guard cannot see",
        id="query_to_xml",
    ),
    pytest.param(
        "SELECT table_to_xml(c.oid::regclass, true, false, '') FROM pg_class c WHERE relname = 'wake' || '_fires'",
        "(any)",
        "table_to_xml() runs SQL or returns rows the guard cannot see",
        id="table_to_xml_of_a_name_built_at_run_time",
    ),
    pytest.param(
        "SELECT * FROM dblink('dbname=postgres', 'SELECT 1') AS t(x int)",
        "(any)",
        "dblink() runs SQL or returns rows the guard cannot see",
        id="dblink_in_from",
    ),
    pytest.param("EXECUTE p", "(any)", "EXECUTE runs a statement prepared earlier", id="execute"),
    pytest.param(
        f"EXECUTE p({RUNS_SQL})", "(any)", "EXECUTE runs a statement prepared earlier", id="execute_with_parameters"
    ),
    pytest.param(
        "EXPLAIN ANALYZE EXECUTE p", "(any)", "EXECUTE runs a statement prepared earlier", id="execute_inside_explain"
    ),
    pytest.param(
        "CREATE TABLE copied AS EXECUTE p",
        "(any)",
        "EXECUTE runs a statement prepared earlier",
        id="execute_inside_create_table_as",
    ),
    pytest.param("FETCH ALL FROM c", "(any)", "FETCH and MOVE read a cursor", id="fetch"),
    pytest.param("MOVE LAST IN c", "(any)", "FETCH and MOVE read a cursor", id="move"),
    pytest.param(
        "CREATE VIEW every_fire AS SELECT * FROM wake_fires", "wake_fires", "does not pin", id="view_not_pinned"
    ),
    pytest.param(
        "CREATE MATERIALIZED VIEW every_fire AS SELECT * FROM wake_fires",
        "wake_fires",
        "does not pin",
        id="materialized_view_not_pinned",
    ),
    pytest.param(
        "CREATE RULE r AS ON INSERT TO conversations DO ALSO DELETE FROM wake_fires",
        "wake_fires",
        "does not pin",
        id="rule_action_not_pinned",
    ),
    pytest.param(
        "CREATE FUNCTION f() RETURNS bigint LANGUAGE sql BEGIN ATOMIC SELECT count(*) FROM wake_fires; END",
        "wake_fires",
        "does not pin",
        id="function_begin_atomic_body_not_pinned",
    ),
    pytest.param(
        "CREATE FUNCTION f(uuid) RETURNS bigint LANGUAGE sql "
        "AS 'SELECT count(*) FROM wake_fires WHERE conversation_id = $1'",
        "wake_fires",
        "a function body given as text cannot be checked",
        id="function_body_as_text_naming_a_wake_table",
    ),
    pytest.param(
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$BEGIN PERFORM ts_stat('x'); END$$",
        "(any)",
        "it calls ts_stat",
        id="function_body_as_text_calling_a_function_that_runs_sql",
    ),
    pytest.param(
        "SELECT 1 FROM public.wake_fires, pg_temp.wake_fires WHERE pg_temp.wake_fires.conversation_id = $1",
        "wake_fires",
        "does not pin wake_fires.conversation_id",
        id="pin_by_schema_bound_to_another_entry_of_that_name",
    ),
    pytest.param(
        "DELETE FROM public.wake_fires USING pg_temp.wake_fires WHERE pg_temp.wake_fires.conversation_id = $1",
        "wake_fires",
        "does not pin wake_fires.conversation_id",
        id="delete_using_pinned_only_on_another_entry_of_that_name",
    ),
    pytest.param(
        "SELECT 1 FROM wake_fires WHERE public.wake_fires.conversation_id = $1",
        "wake_fires",
        "does not pin",
        id="pin_by_schema_on_an_entry_without_schema",
    ),
    pytest.param(
        "SELECT 1 FROM public.wake_fires, pg_temp.wake_fires WHERE wake_fires.conversation_id = $1",
        "wake_fires",
        "does not pin",
        id="pin_by_table_name_on_two_entries_of_that_name",
    ),
    pytest.param(
        "SELECT 1 FROM public.wake_fires WHERE db.public.wake_fires.conversation_id = $1",
        "wake_fires",
        "does not pin",
        id="pin_by_database_schema_table_and_column",
    ),
    pytest.param(
        "SELECT 1 FROM wake_fires f WHERE wake_fires.conversation_id = $1",
        "wake_fires",
        "does not pin f.conversation_id",
        id="pin_by_table_name_on_an_aliased_entry",
    ),
    pytest.param(
        "SELECT 1 FROM (wake_fires JOIN agent_wake_schedules USING (schedule_id)) AS j WHERE j.conversation_id = $1",
        "wake_fires",
        "a join with an alias hides",
        id="table_hidden_by_an_aliased_join",
    ),
    pytest.param(
        "SELECT 1 FROM wake_fires WHERE conversation_id OPERATOR(hostile.=) $1",
        "wake_fires",
        "does not pin",
        id="pin_with_an_equals_of_another_schema",
    ),
    pytest.param(
        "SELECT 1 FROM wake_fires WHERE conversation_id OPERATOR(hostile.=) ANY($1)",
        "wake_fires",
        "does not pin",
        id="pin_with_an_equals_any_of_another_schema",
    ),
    pytest.param(
        "SELECT * FROM ts_stat('SELECT to_tsvector(output_text) FROM wake_fires')",
        "(any)",
        "ts_stat() runs SQL",
        id="ts_stat",
    ),
    pytest.param(
        'SELECT * FROM "pg_catalog"."ts_stat"(\'SELECT 1\')',
        "(any)",
        "ts_stat() runs SQL",
        id="ts_stat_quoted_and_qualified",
    ),
    pytest.param(
        "SELECT ts_rewrite('a'::tsquery, 'SELECT t, s FROM aliases')", "(any)", "ts_rewrite() runs SQL", id="ts_rewrite"
    ),
    pytest.param(
        "SELECT (('SELECT 1')::text).ts_stat",
        "(any)",
        "ts_stat (a function called as a field)",
        id="ts_stat_as_a_field",
    ),
    pytest.param(
        "SELECT s.q.ts_stat FROM (SELECT 'SELECT 1'::text AS q) s",
        "(any)",
        "ts_stat (a function called as a field)",
        id="ts_stat_as_a_field_of_a_column",
    ),
    pytest.param(
        "CREATE OPERATOR ## (FUNCTION = pg_catalog.ts_stat, RIGHTARG = text)",
        "(any)",
        "ts_stat (named in DDL)",
        id="operator_over_a_function_that_runs_sql",
    ),
    pytest.param(
        "CREATE AGGREGATE rewrite_all (text) (SFUNC = ts_rewrite, STYPE = tsquery)",
        "(any)",
        "ts_rewrite (named in DDL)",
        id="aggregate_over_a_function_that_runs_sql",
    ),
    pytest.param(
        "SELECT cursor_to_xml('c', 10, true, false, '')", "(any)", "cursor_to_xml() runs SQL", id="cursor_to_xml"
    ),
    pytest.param(
        "SELECT * FROM pg_logical_slot_peek_changes('slot', NULL, NULL)",
        "(any)",
        "pg_logical_slot_peek_changes() runs SQL or returns rows",
        id="logical_decoding",
    ),
    pytest.param("SELECT dblink_open('c', 'SELECT 1')", "(any)", "dblink_open() runs SQL", id="dblink_open_by_prefix"),
    pytest.param(
        "SELECT dblink_build_sql_insert('wake_fires', '1', 1, '{x}', '{y}')",
        "(any)",
        "dblink_build_sql_insert() runs SQL",
        id="dblink_reading_a_row",
    ),
    pytest.param(
        "SELECT * FROM crosstab('SELECT 1, 2, 3') AS t(a int, b int)", "(any)", "crosstab() runs SQL", id="crosstab"
    ),
    pytest.param(
        "SELECT * FROM connectby('wake_fires', 'fire_id', 'schedule_id', 'x', 0) AS t(a uuid, b uuid, c int)",
        "(any)",
        "connectby() runs SQL",
        id="connectby",
    ),
    pytest.param(
        "SELECT * FROM xpath_table('id', 'doc', 'wake_fires', '/a', 'true') AS t(id int, a text)",
        "(any)",
        "xpath_table() runs SQL",
        id="xpath_table",
    ),
    pytest.param(
        "SELECT most_common_vals FROM pg_stats WHERE tablename = 'wake_fires'",
        "(any)",
        "pg_stats holds sample values",
        id="pg_stats",
    ),
    pytest.param(
        "SELECT * FROM pg_catalog.pg_statistic", "(any)", "pg_statistic holds sample values", id="pg_statistic"
    ),
    pytest.param("SELECT * FROM pg_stats_ext", "(any)", "pg_stats_ext holds sample values", id="pg_stats_ext"),
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


# Every place an expression can sit, with a built-in that runs SQL in it: the
# walk goes through every node, whatever the statement.
EXPRESSION_PLACES = {
    "select_list": f"SELECT {RUNS_SQL}",
    "function_argument": f"SELECT length({RUNS_SQL}::text)",
    "call_argument": f"CALL p({RUNS_SQL})",
    "values": f"VALUES ({RUNS_SQL})",
    "cte": f"WITH x AS (SELECT {RUNS_SQL}) SELECT 1 FROM x",
    "lateral_subquery": f"SELECT 1 FROM conversations c JOIN LATERAL (SELECT {RUNS_SQL}) x ON true",
    "join_condition": f"SELECT 1 FROM conversations a JOIN conversations b ON {RUNS_SQL} IS NOT NULL",
    "where": f"SELECT 1 FROM conversations WHERE {RUNS_SQL} IS NOT NULL",
    "group_by": f"SELECT 1 FROM conversations GROUP BY {RUNS_SQL}::text",
    "having": f"SELECT 1 FROM conversations HAVING {RUNS_SQL} IS NOT NULL",
    "order_by": f"SELECT 1 ORDER BY {RUNS_SQL}::text",
    "limit": f"SELECT 1 LIMIT length({RUNS_SQL}::text)",
    "offset": f"SELECT 1 OFFSET length({RUNS_SQL}::text)",
    "window": f"SELECT count(*) OVER (PARTITION BY {RUNS_SQL}::text) FROM conversations",
    "aggregate_filter": f"SELECT count(*) FILTER (WHERE {RUNS_SQL} IS NOT NULL) FROM conversations",
    "insert_values": f"INSERT INTO conversations (name) VALUES ({RUNS_SQL}::text)",
    "returning": f"DELETE FROM conversations RETURNING {RUNS_SQL}",
    "update_set": f"UPDATE conversations SET name = {RUNS_SQL}::text",
    "on_conflict": (
        f"INSERT INTO conversations (name) VALUES ('x') ON CONFLICT (name) DO UPDATE SET name = 'y' "
        f"WHERE {RUNS_SQL} IS NOT NULL"
    ),
    "declare_cursor": f"DECLARE c CURSOR FOR SELECT {RUNS_SQL}",
    "copy_query": f"COPY (SELECT {RUNS_SQL}) TO STDOUT",
    "explain": f"EXPLAIN ANALYZE SELECT {RUNS_SQL}",
    "prepare": f"PREPARE p AS SELECT {RUNS_SQL}",
    "create_table_as": f"CREATE TABLE copied AS SELECT {RUNS_SQL}",
    "select_into": f"SELECT {RUNS_SQL} INTO copied",
    "view": f"CREATE VIEW v AS SELECT {RUNS_SQL}",
    "materialized_view": f"CREATE MATERIALIZED VIEW v AS SELECT {RUNS_SQL}",
    "rule_action": f"CREATE RULE r AS ON INSERT TO conversations DO ALSO SELECT {RUNS_SQL}",
    "function_begin_atomic": f"CREATE FUNCTION f() RETURNS xml LANGUAGE sql BEGIN ATOMIC SELECT {RUNS_SQL}; END",
    "column_default": f"ALTER TABLE conversations ALTER COLUMN name SET DEFAULT {RUNS_SQL}::text",
    "policy": f"CREATE POLICY p ON conversations USING ({RUNS_SQL} IS NOT NULL)",
    "trigger_condition": (
        "CREATE TRIGGER t BEFORE INSERT ON conversations FOR EACH ROW "
        f"WHEN ({RUNS_SQL} IS NOT NULL) EXECUTE FUNCTION f()"
    ),
}


@pytest.mark.parametrize("sql", EXPRESSION_PLACES.values(), ids=EXPRESSION_PLACES.keys())
def test_a_function_that_runs_sql_is_refused_wherever_it_sits(sql: str) -> None:
    found = refusal(sql, _RULES)
    assert found is not None, "allowed"
    assert "query_to_xml() runs SQL" in found.problem


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 FROM wake_fires WHERE conversation_id = $1",
        "UPDATE wake_fires SET status = $2::VARCHAR WHERE wake_fires.conversation_id = $1::UUID",
    ],
)
def test_text_of_ascii_without_backslashes_reads_alike_under_any_settings(sql: str) -> None:
    assert not reading_depends_on_settings(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 FROM wake_fires WHERE conversation_id = $1 AND status <> '\\'",
        "SELECT 1 FROM wake_fires WHERE conversation_id = $1 AND status <> E'\\''",
        'SELECT 1 FROM U&"wake\\005ffires" WHERE conversation_id = $1',
        "SELECT 1 FROM wake_fires WHERE conversation_id = $1 AND status <> 'ё'",
        "SELECT 1 FROM wake_fires WHERE conversation_id = $1 -- é",
    ],
    ids=["backslash", "escape_string", "unicode_escape", "cyrillic_constant", "accent_in_a_comment"],
)
def test_text_with_a_backslash_or_beyond_ascii_may_read_otherwise_under_other_settings(sql: str) -> None:
    assert reading_depends_on_settings(sql)


@pytest.mark.parametrize("name", sorted(PREBUILT))
def test_every_prebuilt_statement_passes_or_carries_a_span_and_reads_alike_under_any_settings(name: str) -> None:
    statement = PREBUILT[name]
    sql = str(statement.compile(dialect=asyncpg_dialect()))
    spans = statement.get_execution_options().get("agent_wake_spans_partitions")
    assert spans or refusal(sql, _RULES) is None, sql
    assert not reading_depends_on_settings(sql), sql


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
    decide(sql, _RULES)
    hits = decide.cache_info().hits
    decide(sql, _RULES)
    assert decide.cache_info().hits == hits + 1


def test_the_decision_holds_the_refusal_and_whether_the_reading_depends_on_settings() -> None:
    sql = "SELECT 1 FROM wake_fires WHERE status = 'é'"
    assert decide(sql, _RULES) == Decision(refusal(sql, _RULES), reading_depends_on_settings=True)
