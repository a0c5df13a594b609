"""End to end: upstream simulators -> daily extract -> weekly metrics, checked against hand-worked numbers.

Renku 1: Keycloak and GitLab simulators on 127.0.0.1 and the Amalthea audit log in a
bucket of the moto S3 server. Renku 2: a Keycloak simulator and renku-data-services'
tables in a fresh PostgreSQL database. Each test extracts the 14 days 2025-03-03 ..
2025-03-16 (ISO weeks 10 and 11 of 2025) in one run of ``<deployment>_daily_extract``,
aggregates both weeks in one run of ``weekly_metrics``, and compares every number that
``read_metrics("week")`` returns with tables worked out by hand from the activity below.

The activity of each deployment is listed in one place per source, in time order; the
comments next to the expected tables say which events make each count.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from collections import Counter
from pathlib import Path

import boto3
import psycopg2
import yaml
from dagster import DagsterInstance

from renku_metrics.core.config import load_config
from renku_metrics.core.events import looks_personal, pseudonymize_user
from renku_metrics.core.layout import manifest_key
from renku_metrics.core.readers import read_active_users, read_events, read_metrics
from renku_metrics.core.sources import gitlab as gitlab_source
from renku_metrics.core.storage import open_storage
from renku_metrics.definitions import build_defs
from renku_metrics.defs.demo_run import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from renku_metrics_tests.simulators.gitlab_sim import GitLabSimulator
from renku_metrics_tests.simulators.keycloak_sim import KeycloakSimulator
from renku_metrics_tests.test_sources_data_services import DDL

UTC = dt.timezone.utc
FIRST_DAY, LAST_DAY = "2025-03-03", "2025-03-16"  # Monday of week 10 .. Sunday of week 11
WEEK1, WEEK2 = dt.date(2025, 3, 3), dt.date(2025, 3, 10)
# "Now" of the upstream systems: a backfill run early on Monday 2025-03-17.
UPSTREAM_NOW = dt.datetime(2025, 3, 17, 1, 30, tzinfo=UTC)
THIRTY_DAYS = 30 * 24 * 3600  # Keycloak eventsExpiration as the README recommends
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
METRICS = ("commit", "create_dataset", "run_workflow", "start_session")


def t(day: int, hms: str = "12:00:00", ms: int = 0) -> dt.datetime:
    """A UTC moment in March 2025."""
    h, m, s = (int(x) for x in hms.split(":"))
    return dt.datetime(2025, 3, day, h, m, s, ms * 1000, tzinfo=UTC)


def kc(n: int) -> str:
    """A Keycloak user id (UUID form)."""
    return f"5f0c1e2a-7d3b-4c6e-9a1f-{n:012x}"


def write_deployments(tmp_path: Path, deployment: dict) -> Path:
    path = tmp_path / "deployments.yaml"
    path.write_text(yaml.safe_dump({"deployments": [deployment]}, sort_keys=False))
    return path


def run_range(defs, job: str, start: str, end: str, instance):
    """One run over a partition range (single-run backfill), as test_assets does."""
    result = defs.resolve_job_def(job).execute_in_process(
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end},
        run_config=QUIET,
        raise_on_error=True,
    )
    assert result.success
    return result


def manifest_totals(root: str, deployment: str) -> dict:
    """The per-day manifests of FIRST_DAY..LAST_DAY summed up: days, incomplete days, rejected
    records, events per action and every numeric source stat ("<source>/<stat>")."""
    storage = open_storage(root)
    day, last = dt.date.fromisoformat(FIRST_DAY), dt.date.fromisoformat(LAST_DAY)
    totals: Counter = Counter()
    while day <= last:
        manifest = storage.read_json(manifest_key(deployment, day))
        totals["days"] += 1
        totals["incomplete_days"] += any(not info["complete"] for info in manifest["sources"].values())
        totals["rejected_records"] += manifest["rejected_count"]
        totals["events"] += manifest["row_count"]
        for action, count in manifest["by_action"].items():
            totals[f"events_{action}"] += count
        for source, info in manifest["sources"].items():
            for key, value in info["stats"].items():
                if isinstance(value, int) and not isinstance(value, bool):
                    totals[f"{source}/{key}"] += value
        day += dt.timedelta(days=1)
    return totals


def failed_checks(result) -> list:
    return [(c.asset_key, c.check_name, c.metadata) for c in result.get_asset_check_evaluations() if not c.passed]


def weekly_table(root: str, deployment: str) -> list[tuple]:
    """(period_start, metric, users, active_users, pct) of every weekly row of one deployment."""
    frame = read_metrics("week", storage=root)
    rows = frame[frame["deployment"] == deployment]
    return [
        (r.period_start.isoformat(), r.metric, int(r.users), int(r.active_users), float(r.pct))
        for r in rows.sort_values(["period_start", "metric"]).itertuples()
    ]


def assert_table(actual: list[tuple], expected: list[tuple]) -> None:
    """Row by row; pct is stored rounded to two decimals, so it compares exactly after rounding."""
    assert [(*row[:4], round(row[4], 2)) for row in actual] == expected


def assert_no_personal_data(events, personal: list[str]) -> None:
    """No column of the raw events holds an email, an IP, a name or a raw Keycloak id."""
    for column in events.columns:
        if column == "occurred_at":
            continue
        for value in events[column].dropna().astype(str):
            assert not looks_personal(value), (column, value)
            assert "@" not in value, (column, value)
            for text in personal:
                assert text.lower() not in value.lower(), (column, value, text)


def assert_no_personal_data_in_text_files(root: str, personal: list[str]) -> None:
    """Manifests and rejected records (plain text) hold nothing personal either."""
    for path in Path(root).rglob("*"):
        if path.suffix in (".json", ".jsonl"):
            text = path.read_text()
            assert not re.search(r"[^@\s\"]+@[^@\s\"]+\.[a-z]{2,}", text), path
            assert "192.0.2." not in text and "198.51.100." not in text, path
            for value in personal:
                assert value not in text, (path, value)


# -----------------------------------------------------------------------------------
# Renku 1: keycloak + gitlab + amalthea_audit_log
# -----------------------------------------------------------------------------------

# Keycloak ids of the people of deployment "renkulab".
ALICE, BOB, CAROL, DAVE, FRANK, GINA, HANK, JOE, STAFF, CI = (kc(n) for n in range(1, 11))
# GitLab user ids.
GL_ALICE, GL_BOB, GL_DAVE, GL_ERIN, GL_BOT, GL_CI = 101, 102, 104, 105, 106, 107
ERIN_KEY = "gitlab:105"  # GitLab author without a Keycloak identity
USERNAMES = {
    ALICE: "alice",
    BOB: "bob",
    CAROL: "carol",
    DAVE: "dave",
    FRANK: "frank",
    GINA: "gina",
    HANK: "hank",
    JOE: "joe",
    STAFF: "staff.member",
    CI: "ci-runner",
}

R1_LOGINS = [
    # (time, Keycloak id); IP and username are what Keycloak returns with every record.
    (t(2, "12:00:00"), ALICE),  # before start_date: not extracted, but proves retention for 03-03
    (t(3, "08:00:00"), ALICE),
    (t(4, "10:00:00"), BOB),
    (t(4, "12:00:00"), STAFF),  # excluded_users
    (t(5, "09:00:00"), ALICE),
    (t(6, "14:00:00"), CAROL),
    (t(9, "23:59:59", 999), GINA),  # last millisecond of week 1
    (t(11, "11:00:00"), CAROL),
    (t(12, "09:00:00"), ALICE),
    (t(12, "12:00:00"), STAFF),
    (t(13, "16:00:00"), DAVE),
    (t(15, "10:00:00"), FRANK),
    (t(17, "00:00:00"), JOE),  # after the last extracted day: nowhere
]


def r1_gitlab(sim: GitLabSimulator) -> None:
    sim.add_user(GL_ALICE, "alice", extern_uid=ALICE)
    sim.add_user(GL_BOB, "bob", extern_uid=BOB)
    sim.add_user(GL_DAVE, "dave", extern_uid=DAVE)
    sim.add_user(GL_ERIN, "erin")  # no oauth2_generic identity
    sim.add_user(GL_BOT, "project_7_bot_5e1c", bot=True)
    sim.add_user(GL_CI, "ci-runner", extern_uid=CI)  # in gitlab.exclude_users
    sim.add_project(7, visibility="private")
    sim.add_project(8, visibility="public")
    sim.add_project(9, visibility="internal")
    # Week 1. Alice creates project 7's master with two commits (a new branch: commit_count 2).
    sim.push(7, GL_ALICE, t(3, "10:00:00"), ["Add analysis notebook", "renku dataset create flights"])
    sim.push(8, GL_ERIN, t(4, "15:00:00"), ["Fix typo in README"])
    sim.push(7, GL_BOT, t(5, "11:00:00"), ["renku run python bot.py"])  # bot: left out
    sim.push(8, GL_CI, t(6, "16:00:00"), ["renku dataset create ci-fixture"])  # excluded username: left out
    sim.push(9, GL_BOB, t(7, "12:00:00"), ["renkulab.io: dataset create bob-data"])  # web UI
    # Two commits at the last millisecond of week 1: another domain's web UI message is a plain commit.
    sim.push(7, GL_DAVE, t(9, "23:59:59", 999), ["dev.renku.ch: dataset create other", "renku run python train.py"])
    # Week 2, from its first millisecond: two commits read through commit_from..commit_to.
    sim.push(7, GL_BOB, t(10, "00:00:00"), ["renku run python eval.py", "Update README"])
    sim.push(
        8,
        GL_ALICE,
        t(11, "09:00:00"),
        ["renku dataset import --name zenodo-data https://zenodo.org/record/3363060"],
        branch="feature",
        base="master",
    )
    sim.push(9, GL_ERIN, t(12, "14:00:00"), ["renku run python erin.py"])
    # Two days later Dave fast-forwards project 8's master to Alice's feature branch: his push
    # brings Alice's commit again. It counts once, for whoever pushed it first (Alice), as
    # docs/sources-keycloak-gitlab.md ("Events") says, also when the pushes fall on different days.
    sim.move_branch(8, GL_DAVE, t(13, "17:00:00"), "master", sim.repos[8].branches["feature"])
    sim.push(9, GL_ALICE, t(16, "23:59:59", 999), ["renku workflow execute my-plan"])
    sim.push(9, GL_BOB, t(17, "00:00:00"), ["renku dataset create too-late"])  # after the last day


R1_AUDIT = [
    # (time, session uid, old status, new status, Keycloak id or None)
    (t(4, "01:58:00"), "sess-c1", None, "starting", CAROL),
    (t(4, "02:00:00"), "sess-c1", "starting", "running", CAROL),  # in the object started 03-03 09:30
    (t(5, "09:59:00"), "sess-a1", None, "starting", ALICE),
    (t(5, "10:00:00"), "sess-a1", "starting", "running", ALICE),
    (t(5, "18:00:00"), "sess-a1", "running", "hibernated", ALICE),
    (t(6, "13:00:00"), "sess-x1", "starting", "running", None),  # no renku.io/userId label
    (t(10, "00:00:00"), "sess-h1", "starting", "running", HANK),  # first millisecond of week 2
    (t(11, "08:00:00"), "sess-a1", "hibernated", "starting", ALICE),
    (t(11, "08:01:00"), "sess-a1", "starting", "running", ALICE),  # resumed: a start
    (t(12, "13:00:00"), "sess-s1", "starting", "running", STAFF),  # excluded_users
    (t(13, "09:00:00"), "sess-b1", "starting", "failed", BOB),  # never ran: not a start
    (t(15, "15:00:00"), "sess-f1", "starting", "running", FRANK),
    (t(15, "16:00:00"), "sess-f1", "running", "stopping", FRANK),
]


def audit_line(moment: dt.datetime, uid: str, old: str | None, new: str, user: str | None) -> str:
    labels = {"renku.io/userId": user, "renku.io/gitlabProjectId": "7"} if user else {}
    message = {
        "name": f"session-{uid}",
        "namespace": "renku",
        "uid": uid,
        "creation_timestamp": "2025-03-01T08:00:00+00:00",
        "resource_request": {"cpu_millicores": 500, "memory_bytes": 1e9, "disk_bytes": 1e9, "gpus": 0},
        "image": "registry.example.org/image:abc",
        "status": new,
        "old_status": old,
        "additional_labels": labels,
    }
    return json.dumps({"time": moment.isoformat(timespec="milliseconds"), "message": message})


def put_audit_log(endpoint: str, bucket: str, prefix: str) -> None:
    """One object per daily rotation at 09:30 UTC, 03-02 .. 03-17: a line sits in the object
    started at the latest 09:30 before it (so early lines of a day are in the previous day's)."""
    objects: dict[dt.datetime, list[str]] = {t(d, "09:30:00"): [] for d in range(2, 18)}
    for moment, uid, old, new, user in R1_AUDIT:
        started = max(s for s in objects if s <= moment)
        objects[started].append(audit_line(moment, uid, old, new, user))
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for started, lines in objects.items():
        key = f"{prefix}amalthea_audit_log_{started.strftime('%Y%m%d_%H%M%S%z')}.txt"
        client.put_object(Bucket=bucket, Key=key, Body=("\n".join(lines) + "\n").encode())


# Every row of read_metrics("week") for renkulab: (week, metric, users, active users, pct).
#
# Week 1 (03-03 .. 03-09), active users = 6:
#   Alice  logins 03-03, 03-05; push 03-03 (commit, dataset create); session 03-05
#   Bob    login 03-04; web UI push 03-07 (commit, dataset create)
#   Carol  login 03-06; session 03-04 02:00 (line in the 03-03 object)
#   Dave   push 03-09 23:59:59.999 (commit; "renku run" -> run_workflow; the
#          dev.renku.ch web UI message is another domain's: commit only)
#   gitlab:105 (Erin, no identity)  push 03-04 (commit)
#   Gina   login 03-09 23:59:59.999
#   not counted: staff (excluded_users), the bot and ci-runner (never extracted),
#   the session line without a user id, Alice's login of 03-02 (before start_date).
# Week 2 (03-10 .. 03-16), active users = 7:
#   Alice  push 03-11 (commit, dataset import); resume 03-11 08:01 (session); login 03-12;
#          push 03-16 23:59:59.999 (commit, workflow execute)
#   Bob    push 03-10 00:00:00.000 (2 commits, renku run); his failed session is no start
#   Carol  login 03-11
#   Dave   login 03-13; his fast-forward of master onto Alice's feature branch (03-13)
#          brings only Alice's commit of 03-11, which counts once, for Alice
#   gitlab:105  push 03-12 (commit, renku run)
#   Frank  login and session 03-15
#   Hank   session 03-10 00:00:00.000 (line in the 03-09 object)
#   not counted: staff; Joe's login and Bob's push at 03-17 00:00:00.000.
R1_EXPECTED = [
    ("2025-03-03", "collaborate", 0, 6, 0.0),  # gitlab without project_ownership: nobody
    ("2025-03-03", "commit", 4, 6, 66.67),  # Alice, Bob, Dave, gitlab:105
    ("2025-03-03", "create_dataset", 2, 6, 33.33),  # Alice (CLI), Bob (web UI)
    ("2025-03-03", "run_workflow", 1, 6, 16.67),  # Dave
    ("2025-03-03", "start_session", 2, 6, 33.33),  # Carol, Alice
    ("2025-03-03", "start_shared_session", 0, 6, 0.0),
    ("2025-03-10", "collaborate", 0, 7, 0.0),  # gitlab without project_ownership: nobody
    ("2025-03-10", "commit", 3, 7, 42.86),  # Bob, Alice, gitlab:105
    ("2025-03-10", "create_dataset", 1, 7, 14.29),  # Alice (dataset import)
    ("2025-03-10", "run_workflow", 3, 7, 42.86),  # Bob, gitlab:105, Alice
    ("2025-03-10", "start_session", 3, 7, 42.86),  # Hank, Alice (resume), Frank
    ("2025-03-10", "start_shared_session", 0, 7, 0.0),
]


def test_renku1_simulators_to_weekly_metrics(tmp_path, s3_endpoint, s3_bucket, monkeypatch):
    keycloak = KeycloakSimulator(now=lambda: UPSTREAM_NOW, events_expiration_seconds=THIRTY_DAYS)
    gitlab = GitLabSimulator(now=lambda: UPSTREAM_NOW)
    for moment, user in R1_LOGINS:
        keycloak.add_login(moment, user, username=f"{USERNAMES[user]}@example.org", ip_address="192.0.2.17")
    r1_gitlab(gitlab)
    put_audit_log(s3_endpoint, s3_bucket, "renkulab/")

    env = {
        "RENKULAB_KEYCLOAK_SECRET": keycloak.client_secret,
        "RENKULAB_GITLAB_TOKEN": gitlab.token,
        "RENKULAB_AUDIT_KEY_ID": "testing",
        "RENKULAB_AUDIT_SECRET": "testing",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # The GitLab connector marks windows older than GitLab's 3-year event retention incomplete,
    # judged by its clock: give it the simulators' "now", so the test does not expire in 2028.
    monkeypatch.setattr(
        gitlab_source.Source,
        "__init__",
        functools.partialmethod(gitlab_source.Source.__init__, now=lambda: UPSTREAM_NOW),
    )
    fast = {"backoff_seconds": 0.01, "max_backoff_seconds": 0.05, "max_retries": 2}
    with keycloak, gitlab:
        path = write_deployments(
            tmp_path,
            {
                "name": "renkulab",
                "start_date": FIRST_DAY,
                "excluded_users": [STAFF],
                "sources": {
                    "keycloak": {
                        "url": keycloak.base_url,
                        "realm": keycloak.realm,
                        "client_id": keycloak.client_id,
                        "client_secret_env": "RENKULAB_KEYCLOAK_SECRET",
                        **fast,
                    },
                    "gitlab": {
                        "url": gitlab.url,
                        "token_env": "RENKULAB_GITLAB_TOKEN",
                        "identity_provider": "oauth2_generic",
                        "exclude_users": ["ci-runner"],
                        "renku_domain": "renkulab.io",
                        **fast,
                    },
                    "amalthea_audit_log": {
                        "bucket": s3_bucket,
                        "prefix": "renkulab/",
                        "endpoint_url": s3_endpoint,
                        "region": "us-east-1",
                        "access_key_id_env": "RENKULAB_AUDIT_KEY_ID",
                        "secret_access_key_env": "RENKULAB_AUDIT_SECRET",
                        "max_attempts": 2,
                    },
                },
            },
        )
        config = load_config(path, env=env)
        root = str(tmp_path / "data")
        defs = build_defs(config=config, storage_root=root)
        instance = DagsterInstance.ephemeral()
        extract = run_range(defs, "renkulab_daily_extract", FIRST_DAY, LAST_DAY, instance)

    # Every source read its whole window on every day (Keycloak retains 30 days; an older
    # login proves it), and every raw-event check passed.
    assert failed_checks(extract) == []
    meta = manifest_totals(root, "renkulab")
    assert (meta["days"], meta["incomplete_days"], meta["rejected_records"]) == (14, 0, 0)

    weekly = run_range(defs, "weekly_metrics", WEEK1.isoformat(), WEEK2.isoformat(), instance)
    assert failed_checks(weekly) == []

    # Every weekly number, against the hand-worked table.
    assert_table(weekly_table(root, "renkulab"), R1_EXPECTED)
    # One deployment: the "all" rollup says the same.
    assert_table(weekly_table(root, "all"), R1_EXPECTED)
    metrics = read_metrics("week", storage=root)
    assert len(metrics) == 24 and metrics["complete"].all() and (metrics["coverage_note"] == "").all()
    denominators = read_active_users("week", storage=root)
    renkulab = denominators[denominators["deployment"] == "renkulab"].sort_values("period_start")
    assert list(renkulab["active_users"]) == [6, 7]
    assert list(renkulab["excluded_users"]) == [1, 1]  # staff was active in both weeks
    assert list(renkulab["days_extracted"]) == [7, 7] and renkulab["complete"].all()

    # The raw events behind them.
    # 11 logins; 11 commits (Alice 2+1+1, Erin 1+1, Bob 1+2, Dave 2; Dave's fast-forward adds
    # none); 3 dataset creations; 4 workflow runs; 6 session starts (staff's included).
    events = read_events("renkulab", storage=root)
    by_action = {"login": 11, "commit": 11, "create_dataset": 3, "run_workflow": 4, "start_session": 6}
    assert Counter(events["action"]) == by_action
    assert {a: meta[f"events_{a}"] for a in by_action} == by_action
    assert meta["events"] == 35
    # A commit is one event: its id (project, sha, action) occurs once across all days.
    assert events["event_id"].is_unique, events[events["event_id"].duplicated(keep=False)]
    md5 = pseudonymize_user
    dave_gitlab = events[(events["user_id"] == md5(DAVE)) & (events["source"] == "gitlab")]
    assert list(dave_gitlab["occurred_at"].unique()) == [t(9, "23:59:59", 999)]
    assert meta["gitlab/bot_authors"] == 1  # the day of the bot's push
    assert meta["gitlab/excluded_authors"] == 1  # the day of ci-runner's push
    assert meta["gitlab/unmapped_authors"] == 2  # Erin, on 03-04 and 03-12
    assert meta["amalthea_audit_log/lines_without_user"] == 1
    assert meta["amalthea_audit_log/session_starts"] == 6
    # Exactly these users: the unmapped author under gitlab:<id>; the excluded staff member is
    # stored (left out only when aggregating); no bot, no ci-runner, nobody after the last day.
    assert set(events["user_id"]) == {md5(u) for u in (ALICE, BOB, CAROL, DAVE, FRANK, GINA, HANK, STAFF)} | {ERIN_KEY}
    assert set(events.loc[events["user_id"] == ERIN_KEY, "action"]) == {"commit", "run_workflow"}
    for absent in (md5(CI), md5(JOE), "gitlab:106", "gitlab:107", "gitlab:101", "gitlab:102", "gitlab:104"):
        assert absent not in set(events["user_id"])
    assert events["occurred_at"].min() == t(3, "08:00:00") and events["occurred_at"].max() == t(16, "23:59:59", 999)
    gitlab_events = events[events["source"] == "gitlab"]
    assert dict(zip(gitlab_events["project_id"], gitlab_events["project_visibility"], strict=False)) == {
        "7": "private",
        "8": "public",
        "9": "internal",
    }
    personal = [
        *USERNAMES.values(),
        "erin",
        "project_7_bot",
        "example.org",
        "Jane Doe",
        "Name of",
        "192.0.2.17",
        *(u for u in USERNAMES),
    ]
    assert_no_personal_data(events, personal)
    assert_no_personal_data_in_text_files(root, list(USERNAMES))


# -----------------------------------------------------------------------------------
# Renku 2: keycloak + data_services
# -----------------------------------------------------------------------------------

# Keycloak ids of the people of deployment "renkuhub".
R2 = {
    name: kc(0x200 + i)
    for i, name in enumerate(["ann", "ben", "cid", "dia", "eve", "fay", "gus", "hal", "pia", "zed", "kim"])
}

R2_LOGINS = [
    (t(1, "09:00:00"), "ann"),  # before start_date; proves retention (through the probe)
    (t(4, "08:00:00"), "pia"),
    (t(5, "09:00:00"), "ann"),
    (t(6, "09:00:00"), "ben"),
    (t(9, "23:59:59", 999), "fay"),  # last millisecond of week 1
    (t(10, "00:00:00"), "gus"),  # first millisecond of week 2
    (t(11, "10:00:00"), "cid"),
    (t(14, "10:00:00"), "ann"),
    (t(15, "10:00:00"), "hal"),
]


def r2_captures() -> list[tuple]:
    """(uid, kind, phase, capture_date, since, Keycloak id) of resource_requests_log."""
    rows = [
        # The log spans the whole backfill: idle captures at both ends (no user).
        ("heartbeat-start", "Pod", "Pending", t(2, "00:00:00"), None, None),
        ("heartbeat-end", "Pod", "Pending", t(17, "06:00:00"), None, None),
        # zed: started 03-02 23:50 (before start_date), first captured on 03-03: not counted.
        ("pod-z", "Pod", "Running", t(3, "00:05:00"), t(2, "23:50:00"), "zed"),
        # pia: Pending only (never scheduled): not a start.
        ("pod-p", "Pod", "Pending", t(4, "10:00:00"), t(4, "09:59:00"), "pia"),
        ("pod-p", "Pod", "Pending", t(4, "10:10:00"), t(4, "09:59:00"), "pia"),
        # kim: only a volume claim, no session.
        ("pvc-k", "PersistentVolumeClaim", "Bound", t(6, "10:00:00"), t(6, "09:50:00"), "kim"),
        # nobody: a running pod without a user id.
        ("pod-anon", "Pod", "Running", t(11, "12:00:00"), t(11, "11:58:00"), None),
        # dia: started at the first millisecond of week 2.
        ("pod-d", "Pod", "Running", t(10, "00:05:00"), t(10, "00:00:00"), "dia"),
        # ann: a second session in week 2.
        ("pod-a2", "Pod", "Running", t(12, "14:05:00"), t(12, "14:01:00"), "ann"),
        # eve: started at the last millisecond of the last day, first captured on 03-17.
        ("pod-e", "Pod", "Running", t(17, "00:04:00"), t(16, "23:59:59", 999), "eve"),
    ]
    # ann: Pending once, then captured Running every 10 minutes for 17 hours (past midnight).
    rows.append(("pod-a1", "Pod", "Pending", t(5, "09:58:00"), t(5, "09:57:00"), "ann"))
    moment = t(5, "10:08:00")
    while moment < t(6, "03:00:00"):
        rows.append(("pod-a1", "Pod", "Running", moment, t(5, "09:57:00"), "ann"))
        moment += dt.timedelta(minutes=10)
    # cid: started 03-09 23:55 (week 1), first captured on 03-10 (week 2), captured for an hour.
    moment = t(10, "00:03:00")
    while moment < t(10, "01:03:00"):
        rows.append(("pod-c", "Pod", "Running", moment, t(9, "23:55:00"), "cid"))
        moment += dt.timedelta(minutes=10)
    return rows


def r2_metrics_rows() -> list[tuple]:
    """(event, anonymous_user_id, timestamp) of metrics.metrics (anonymous id = md5 of the Keycloak id)."""
    md5 = lambda name: pseudonymize_user(R2[name])  # noqa: E731
    return [
        ("group_created", md5("ann"), dt.datetime(2025, 2, 20, 12, tzinfo=UTC)),  # old row: nothing drained yet
        ("project_created", md5("dia"), t(5, "08:00:00")),  # no canonical action: dia not active in week 1
        ("data_connector_created", md5("ben"), t(6, "09:30:00")),
        ("data_connector_created", md5("cid"), t(10, "00:00:00")),  # first millisecond of week 2
        ("data_connector_created", "anonymous", t(12, "10:00:00")),  # no user: not counted
        ("session_started", md5("eve"), t(13, "10:00:00")),  # ignored: the capture log counts sessions
        ("data_connector_created", md5("ann"), t(16, "23:59:59", 999)),  # last millisecond of week 2
        ("data_connector_created", md5("kim"), t(17, "00:00:00")),  # after the last day
    ]


def fill_data_services(params: dict) -> None:
    conn = psycopg2.connect(**params)
    with conn, conn.cursor() as cur:
        cur.execute(DDL)
        for n, (uid, kind, phase, captured, since, user) in enumerate(r2_captures()):
            cur.execute(
                """INSERT INTO resource_pools.resource_requests_log
                   (id, namespace, name, uid, kind, api_version, phase, capture_date, capture_interval,
                    user_id, project_id, since, cpu_request, memory_request)
                   VALUES (%s, 'renku', %s, %s, %s, 'v1', %s, %s, interval '10 minutes', %s, %s, %s, 0.5, 1000000000)""",
                (
                    f"01JCAPTURE{n:016d}",
                    f"session-{uid}",
                    uid,
                    kind,
                    phase,
                    captured,
                    R2[user] if user else None,
                    "01JPROJECT0000000000000001" if user else None,
                    since,
                ),
            )
        for n, (event, anonymous, timestamp) in enumerate(r2_metrics_rows()):
            cur.execute(
                """INSERT INTO metrics.metrics (id, event, anonymous_user_id, "timestamp", metadata)
                   VALUES (%s, %s, %s, %s, '{}')""",
                (f"01JMETRIC0{n:016d}", event, anonymous, timestamp),
            )
    conn.close()


# Every row of read_metrics("week") for renkuhub: (week, metric, users, active users, pct).
#
# Week 1 (03-03 .. 03-09), active users = 5:
#   ann  login 03-05; pod-a1 since 03-05 09:57 (one start although captured ~100 times)
#   ben  login 03-06; data connector 03-06
#   cid  pod-c since 03-09 23:55 (first captured 03-10 00:03: counted on its start day)
#   fay  login 03-09 23:59:59.999
#   pia  login 03-04 (her pod never left Pending)
#   not active: dia (project_created only), zed (pod started 03-02), kim (volume claim only).
# Week 2 (03-10 .. 03-16), active users = 6:
#   ann  pod-a2 03-12; login 03-14; data connector 03-16 23:59:59.999
#   cid  data connector 03-10 00:00:00.000; login 03-11
#   dia  pod-d since 03-10 00:00:00.000
#   eve  pod-e since 03-16 23:59:59.999 (captured 03-17; her metrics session_started is ignored)
#   gus  login 03-10 00:00:00.000
#   hal  login 03-15
#   not active: kim (data connector 03-17), the anonymous row and the pod without user.
# Renku 2 has no commits and no workflows: 0 users (0 %) in both weeks.
R2_EXPECTED = [
    ("2025-03-03", "collaborate", 0, 5, 0.0),  # Renku 2: no ownership source
    ("2025-03-03", "commit", 0, 5, 0.0),
    ("2025-03-03", "create_dataset", 1, 5, 20.0),  # ben
    ("2025-03-03", "run_workflow", 0, 5, 0.0),
    ("2025-03-03", "start_session", 2, 5, 40.0),  # ann, cid
    ("2025-03-03", "start_shared_session", 0, 5, 0.0),
    ("2025-03-10", "collaborate", 0, 6, 0.0),  # Renku 2: no ownership source
    ("2025-03-10", "commit", 0, 6, 0.0),
    ("2025-03-10", "create_dataset", 2, 6, 33.33),  # cid, ann
    ("2025-03-10", "run_workflow", 0, 6, 0.0),
    ("2025-03-10", "start_session", 3, 6, 50.0),  # dia, ann, eve
    ("2025-03-10", "start_shared_session", 0, 6, 0.0),
]


def test_renku2_keycloak_and_data_services_to_weekly_metrics(tmp_path, postgres_db, monkeypatch):
    fill_data_services(postgres_db)
    keycloak = KeycloakSimulator(now=lambda: UPSTREAM_NOW, events_expiration_seconds=THIRTY_DAYS)
    for moment, name in R2_LOGINS:
        keycloak.add_login(moment, R2[name], username=f"{name}@example.org", ip_address="198.51.100.7")
    p = postgres_db
    env = {
        "RENKUHUB_KEYCLOAK_SECRET": keycloak.client_secret,
        "RENKUHUB_DATA_SERVICES_DSN": (
            f"host={p['host']} port={p['port']} user={p['user']} password={p['password']} dbname={p['dbname']}"
        ),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with keycloak:
        path = write_deployments(
            tmp_path,
            {
                "name": "renkuhub",
                "start_date": FIRST_DAY,
                "sources": {
                    "keycloak": {
                        "url": keycloak.base_url,
                        "realm": keycloak.realm,
                        "client_id": keycloak.client_id,
                        "client_secret_env": "RENKUHUB_KEYCLOAK_SECRET",
                        "backoff_seconds": 0.01,
                        "max_backoff_seconds": 0.05,
                        "max_retries": 2,
                    },
                    "data_services": {"dsn_env": "RENKUHUB_DATA_SERVICES_DSN", "connect_timeout_seconds": 5},
                },
            },
        )
        config = load_config(path, env=env)
        root = str(tmp_path / "data")
        defs = build_defs(config=config, storage_root=root)
        instance = DagsterInstance.ephemeral()
        extract = run_range(defs, "renkuhub_daily_extract", FIRST_DAY, LAST_DAY, instance)

    assert failed_checks(extract) == []
    meta = manifest_totals(root, "renkuhub")
    assert (meta["days"], meta["incomplete_days"], meta["rejected_records"]) == (14, 0, 0)
    # 8 logins in the range; 5 pod starts (ann x2, cid, dia, eve); 3 data connectors (ben, cid, ann).
    assert {a: meta[f"events_{a}"] for a in ("login", *METRICS)} == {
        "login": 8,
        "commit": 0,
        "create_dataset": 3,
        "run_workflow": 0,
        "start_session": 5,
    }
    assert meta["data_services/session_starts"] == 5
    assert meta["data_services/pods_pending_only"] == 1  # pia's pod, on 03-04
    assert meta["data_services/pods_without_user"] == 1
    assert meta["data_services/data_connectors_created"] == 3
    assert meta["data_services/projects_created"] == 1
    assert meta["data_services/metrics_session_started_ignored"] == 1
    assert meta["data_services/metrics_anonymous_rows"] == 1

    events = read_events("renkuhub", storage=root)
    md5 = lambda name: pseudonymize_user(R2[name])  # noqa: E731
    assert set(events["user_id"]) == {md5(n) for n in ("ann", "ben", "cid", "dia", "eve", "fay", "gus", "hal", "pia")}
    starts = events[events["action"] == "start_session"]
    assert sorted(zip(starts["user_id"], starts["occurred_at"], strict=False)) == sorted(
        [
            (md5("ann"), t(5, "09:57:00")),
            (md5("cid"), t(9, "23:55:00")),
            (md5("dia"), t(10, "00:00:00")),
            (md5("ann"), t(12, "14:01:00")),
            (md5("eve"), t(16, "23:59:59", 999)),
        ]
    )
    assert_no_personal_data(events, [*R2.values(), "example.org", "198.51.100.7"])
    assert_no_personal_data_in_text_files(root, [*R2.values(), p["password"]])

    weekly = run_range(defs, "weekly_metrics", WEEK1.isoformat(), WEEK2.isoformat(), instance)
    assert failed_checks(weekly) == []

    assert_table(weekly_table(root, "renkuhub"), R2_EXPECTED)
    assert_table(weekly_table(root, "all"), R2_EXPECTED)
    metrics = read_metrics("week", storage=root)
    assert len(metrics) == 24 and metrics["complete"].all() and (metrics["coverage_note"] == "").all()
    zero = metrics[metrics["metric"].isin(["commit", "run_workflow"])]
    assert (zero["users"] == 0).all() and (zero["pct"] == 0.0).all()
    denominators = read_active_users("week", storage=root)
    hub = denominators[denominators["deployment"] == "renkuhub"].sort_values("period_start")
    assert list(hub["active_users"]) == [5, 6] and list(hub["excluded_users"]) == [0, 0]
