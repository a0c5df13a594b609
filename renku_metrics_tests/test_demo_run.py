"""`make demo` (renku_metrics.defs.demo_run) leaves every weekly and monthly partition
with its own numbers, and the report with its charts."""

from __future__ import annotations

import re

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from renku_metrics.core.readers import read_metrics
from renku_metrics.defs import demo_run
from renku_metrics.defs.metadata import table_rows


def test_demo_materializes_each_period_with_its_own_numbers(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    config = tmp_path / "deployments.yaml"
    config.write_text(
        "deployments:\n"
        "  - {name: demo, start_date: 2025-02-01, sources: {demo: {seed: 5, users: 300, academic_team: 12}},\n"
        "     groups: {keycloak_groups: [{path: /SDSC/Academic Team}], email_domains: {epfl.ch: EPFL}}}\n"
        "  - {name: demo_small, start_date: 2025-02-01, sources: {demo: {seed: 6, users: 80, bot: false}}}\n"
    )
    root = tmp_path / "data"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("RENKU_METRICS_STORAGE", str(root))
    monkeypatch.setenv("RENKU_METRICS_DEPLOYMENTS", str(config))
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        "targets:\n"
        "  - {id: committers, metric: commit, measure: users, period: week, comparison: '>=', value: 1,\n"
        "     start: 2025-03-17, by: 2025-06-30, owner: team, why: Anyone committing.}\n"
        "  - {id: team, metric: start_session, measure: pct_of_members, deployment: demo, group: /T,\n"
        "     period: month, comparison: '>=', value: 50, start: 2025-03-01, by: 2025-06-30, owner: team, why: x}\n"
    )
    monkeypatch.setenv("RENKU_METRICS_TARGETS", str(targets))

    # The last 3 complete weeks before 2025-04-09 and the complete month before it.
    assert demo_run.main(["--weeks", "3", "--today", "2025-04-09"]) == 0
    out = capsys.readouterr().out
    assert "weekly_metrics 2025-03-17..2025-03-31: 3 runs, one per period" in out
    assert "monthly_metrics 2025-03-01..2025-03-01: 1 runs, one per period" in out
    # The group metrics of the last week and month, per deployment and for all.
    assert "Group metrics, week of 2025-03-31" in out and "Group metrics, month of 2025-03-01" in out
    assert re.search(r"2025-03-31  demo\s+/SDSC/Academic Team\s+members \d+, active \d+, start_session", out)

    # Every target evaluated as of the last complete week, printed with its status.
    assert "target_status 2025-03-31: every target evaluated as of that week" in out
    lines = out[out.index("Targets (latest complete period") :].splitlines()
    committers = next(line for line in lines if line.strip().startswith("committers"))
    assert "week 2025-03-31" in committers and " met " in committers
    team = next(line for line in lines if line.strip().startswith("team"))
    # The demo has group metrics, but no group "/T": no_data, naming what is missing.
    assert " no_data " in team and "has no rows of group '/T'" in team

    with DagsterInstance.get() as instance:
        for period, key, expected in (
            ("week", "core_actions_weekly", ["2025-03-17", "2025-03-24", "2025-03-31"]),
            ("month", "core_actions_monthly", ["2025-03-01"]),
        ):
            metrics = read_metrics(period, storage=str(root))
            assert sorted(str(s) for s in metrics["period_start"].unique()) == expected
            for start, rows in metrics.groupby("period_start"):
                records = instance.fetch_materializations(
                    AssetRecordsFilter(asset_key=AssetKey(key), asset_partitions=[str(start)]), limit=1
                ).records
                meta = records[0].asset_materialization.metadata
                assert meta["period"].value == str(start)
                assert {r["period"] for r in table_rows(meta["table"])} == {str(start)}
                for r in rows.itertuples():
                    assert meta[f"{r.deployment}/{r.metric}/users"].value == r.users, (key, start, r.metric)
                    assert meta[f"{r.deployment}/active_users"].value == r.active_users
        report = instance.fetch_materializations(AssetKey("metrics_report"), limit=1).records
        meta = report[0].asset_materialization.metadata
        assert meta["latest_complete_week"].value == "2025-03-31"
        assert all("data:image/png;base64," in meta[f"chart_{n}"].value for n in ("weekly_share", "monthly_share"))
    # The digest of the last complete week is written and its place printed; no channel: sent nowhere.
    digest = root / "reports" / "digest" / "2025-03-31" / "digest.md"
    assert f"weekly_digest 2025-03-31: {digest.resolve()} (also .html, .png)" in out
    assert "sent nowhere (no channel configured" in out
    assert "| demo | this week | last week | 4-week average | change |" in digest.read_text()
    # The activation of the latest cohort whose 28-day windows have ended (2025-03-03 + 35 days =
    # 2025-04-07 <= today; 2025-03-10 + 35 > today, its last days not extracted): provisional, the
    # history before it being short.
    from renku_metrics.core.readers import read_activation

    activation = read_activation(storage=str(root))
    latest = activation[activation["period_start"].astype(str) == "2025-03-03"].set_index("deployment")
    assert "Activation of new users, cohort week 2025-03-03 (PROVISIONAL (not final))" in out
    for name in ("demo", "demo_small", "all"):
        r = latest.loc[name]
        assert (
            f"{r.cohort_users:>6} new users: {r.activation_7d:5.1f}% within 7 days, {r.activation_28d:5.1f}% within 28 days"
            in out
        )
    assert "cohort week 2025-03-10" not in out
