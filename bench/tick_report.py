"""The tick benchmark's table."""

from typing import Any


def print_report(report: dict[str, Any]) -> None:
    machine, data = report["machine"], report["data"]
    print(
        f"\nPostgreSQL {machine['postgresql']}, shared_buffers {machine['shared_buffers']}, {machine['cpu_count']} CPUs"
        f"; {data['schedules']:,} schedules ({data['active_schedules']:,} active), {data['fires']:,} fires, "
        f"{data['conversations']:,} conversations"
    )
    print(
        f"\n{'path':<30}{'repository':>11}{'sqlalchemy':>11}{'raw':>8}  (ops/s)"
        f"{'repo/raw':>10}{'sqla/raw':>10}{'repo/sqla':>11}{'target':>16}{'met?':>6}"
    )
    for row in report["paths"]:
        target = f"repo/{'raw' if row['target_baseline'] == 'raw' else 'sqla'} {row['target']:.1f}"
        print(
            f"{row['path']:<30}{row['repository_ops_s']:>11,.0f}{row['sqlalchemy_ops_s']:>11,.0f}"
            f"{row['raw_ops_s']:>8,.0f}{'':9}{row['ratio']:>10.2f}{row['sqlalchemy_ratio']:>10.2f}"
            f"{row['repository_vs_sqlalchemy']:>11.2f}"
            f"{target:>16}"
            f"{'yes' if row['met'] else 'NO':>6}"
        )
    print(f"\n{'claim_due(200) workers':<30}{'claimed':>18}{'seconds':>12}{'claims/s':>10}{'vs 1':>8}")
    for row in report["scaling"]:
        speedup = row["claims_per_s"] / report["scaling"][0]["claims_per_s"]
        print(
            f"{row['workers']:<30}{row['claimed']:>18,}{row['seconds']:>12.2f}{row['claims_per_s']:>10,.0f}{speedup:>8.2f}"
        )
    print(f"\n{'plan (EXPLAIN)':<30}{'statement':<28}{'plan':<9}{'scans':<8}nodes")
    for plan in report["plans"]:
        verdict = "SEQ" if plan["seq_scan_on"] else "ok"
        print(f"{plan['path']:<30}{plan['statement']:<28}{plan['plan']:<9}{verdict:<8}{'; '.join(plan['nodes'])}")
    seconds = report["seconds"]
    print(f"\nseeding {seconds['seed']:.1f} s, whole run {seconds['total']:.1f} s")
