"""Groups and institutions: membership from the simulated Keycloak, snapshots over time, group metrics.

Calendar of the group-metrics tests (2025): W0 = Mon 2025-02-24, W1 = Mon 2025-03-03,
W2 = Mon 2025-03-10 (ISO weeks). Group /Team in the simulated Keycloak:

    snapshot for W1, taken Mon 2025-03-10 (W1's end): members A B C D E
    then E leaves and F joins
    snapshot for W2, taken Mon 2025-03-17 (W2's end): members A B C D F

Events (fixture source, one per line):
    W1: A start_session (Tue), B login (Wed), E commit (Thu), F login (Thu), X login (not a member)
    W2: A login (Tue), C commit (Wed), E start_session (Wed), F start_session (Fri)
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from renku_metrics.core.catalog import load_catalog
from renku_metrics.core.config import Deployment, load_config
from renku_metrics.core.errors import ConfigError
from renku_metrics.core.events import contains_email, pseudonymize_user
from renku_metrics.core.sources.base import SourceError
from renku_metrics.core.sources.groups import GroupsSettings, extract_membership, institution_of
from renku_metrics.core.sources.keycloak import Settings as KeycloakSettings
from renku_metrics.core.sources.keycloak_groups import KeycloakDirectory
from renku_metrics.core.storage import LocalStorage
from renku_metrics.core.value import groups
from renku_metrics_tests.helpers import ev, extract_days
from renku_metrics_tests.simulators.keycloak_sim import KeycloakSimulator

UTC = dt.timezone.utc
SECRET_ENV = "TEST_KC_SECRET"
W0, W1, W2 = dt.date(2025, 2, 24), dt.date(2025, 3, 3), dt.date(2025, 3, 10)


@pytest.fixture
def keycloak():
    with KeycloakSimulator() as sim:
        yield sim


def kc_settings(sim: KeycloakSimulator, **overrides) -> KeycloakSettings:
    values = dict(
        url=sim.base_url,
        realm=sim.realm,
        client_id=sim.client_id,
        client_secret_env=SECRET_ENV,
        backoff_seconds=0.001,
        max_backoff_seconds=0.005,
        max_retries=1,
    )
    values.update(overrides)
    return KeycloakSettings(**values)


def directory(sim: KeycloakSimulator, **overrides) -> KeycloakDirectory:
    return KeycloakDirectory("testdep", kc_settings(sim, **overrides), {SECRET_ENV: sim.client_secret})


def settings(**raw) -> GroupsSettings:
    return GroupsSettings.from_mapping(raw, "deployments.yaml: deployment 'testdep'", ".")


def uid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def keys(*ns: int) -> set[str]:
    return {pseudonymize_user(uid(n)) for n in ns}


# -- Keycloak groups -------------------------------------------------------------


def test_members_are_paged_until_a_short_page(keycloak):
    team = keycloak.add_group("Academic Team", parent=keycloak.add_group("SDSC"))
    for n in range(250):
        keycloak.add_member(team, uid(n))
    members = directory(keycloak, page_size=100).group_members("/SDSC/Academic Team", subgroups=False)
    assert members == {uid(n) for n in range(250)}
    pages = [r for r in keycloak.requests_to(f"/groups/{team}/members")]
    assert [(r.arg("first"), r.arg("max")) for r in pages] == [("0", "100"), ("100", "100"), ("200", "100")]


def test_an_exactly_full_last_page_needs_one_empty_page(keycloak):
    team = keycloak.add_group("Team", members=[uid(n) for n in range(20)])
    assert len(directory(keycloak, page_size=10).group_members("/Team", subgroups=False)) == 20
    assert [r.arg("first") for r in keycloak.requests_to(f"/groups/{team}/members")] == ["0", "10", "20"]


def test_subgroups_included_or_not(keycloak):
    sdsc = keycloak.add_group("SDSC", members=[uid(1)])
    team = keycloak.add_group("Academic Team", parent=sdsc, members=[uid(2), uid(3)])
    sub = keycloak.add_group("Data Science", parent=team, members=[uid(3), uid(4)])
    keycloak.add_group("Deeper", parent=sub, members=[uid(5)])
    # 12 sibling subgroups: more than the children endpoint's default page of 10
    for n in range(12):
        keycloak.add_group(f"Project {n:02d}", parent=team, members=[uid(100 + n)])
    d = directory(keycloak, page_size=5)
    assert d.group_members("/SDSC/Academic Team", subgroups=False) == {uid(2), uid(3)}
    assert d.group_members("/SDSC/Academic Team", subgroups=True) == {
        uid(2),
        uid(3),
        uid(4),
        uid(5),
        *(uid(100 + n) for n in range(12)),
    }
    frame = extract_membership(
        settings(keycloak_groups=[{"path": "/SDSC/Academic Team", "subgroups": False}, {"path": "/SDSC"}]),
        d,
        "here",
    )
    team_rows = frame[frame["group"] == "/SDSC/Academic Team"]
    assert set(team_rows["user_key"]) == keys(2, 3)
    assert (frame["group_kind"] == "keycloak_group").all()
    assert len(frame[frame["group"] == "/SDSC"]) == 17  # 1, 2, 3, 4, 5 and the 12 project members


def test_an_unknown_group_path_names_it(keycloak):
    keycloak.add_group("SDSC")
    with pytest.raises(SourceError, match=r"group '/SDSC/Nope' not found in realm 'Renku'"):
        directory(keycloak).group_members("/SDSC/Nope", subgroups=True)


def test_missing_view_users_role_is_named(keycloak):
    keycloak.roles = ("view-events", "query-groups")  # lists groups, not their members
    keycloak.add_group("Team", members=[uid(1)])
    with pytest.raises(SourceError, match=r"HTTP 403.*needs the realm-management role view-users") as err:
        directory(keycloak).group_members("/Team", subgroups=False)
    assert "/members" in str(err.value) and keycloak.client_secret not in str(err.value)


# -- organizations ---------------------------------------------------------------


def test_organizations_as_institutions(keycloak):
    keycloak.organizations_enabled = True
    for n in range(12):  # more organizations than the default page of 10
        keycloak.add_organization(f"Org {n:02d}", members=[uid(n)])
    keycloak.add_organization("ETH Zurich", members=[uid(n) for n in range(100, 125)])
    frame = extract_membership(settings(organizations=True), directory(keycloak, page_size=10), "here")
    eth = frame[frame["group"] == "ETH Zurich"]
    assert set(eth["user_key"]) == keys(*range(100, 125)) and (eth["group_kind"] == "organization").all()
    assert frame["group"].nunique() == 13


def test_organizations_not_enabled_is_a_clear_error(keycloak):
    with pytest.raises(SourceError, match="Organizations not enabled for this realm"):
        directory(keycloak).organizations()


def test_organizations_needing_manage_realm_say_so(keycloak):
    keycloak.organizations_enabled = True
    keycloak.organizations_need_manage_realm = True
    with pytest.raises(SourceError, match="view-users.*manage-realm"):
        directory(keycloak).organizations()


# -- e-mail domains and user lists ----------------------------------------------


def test_domain_map_subdomains_case_and_no_match():
    domains = {"ethz.ch": "ETH Zurich", "sdsc.ethz.ch": "SDSC", "EPFL.ch": "EPFL"}
    assert institution_of("a@ethz.ch", domains) == "ETH Zurich"
    assert institution_of("a@inf.ethz.ch", domains) == "ETH Zurich"
    assert institution_of("a@student.inf.ETHZ.CH", domains) == "ETH Zurich"
    assert institution_of("a@sdsc.ethz.ch", domains) == "SDSC"  # the most specific domain wins
    assert institution_of("A@Epfl.Ch", domains) == "EPFL"
    assert institution_of("a@notethz.ch", domains) is None  # a suffix that is not a parent domain
    assert institution_of("a@ethz.ch.evil.com", domains) is None
    assert institution_of("a@gmail.com", domains) is None
    assert institution_of(None, domains) is None and institution_of("no-at-sign", domains) is None


def test_domain_map_over_keycloak_users(keycloak):
    keycloak.add_user(uid(1), email="jane@ethz.ch")
    keycloak.add_user(uid(2), email="joe@INF.ETHZ.CH")
    keycloak.add_user(uid(3), email="ann@gmail.com")
    keycloak.add_user(uid(4), email=None)
    keycloak.add_user(uid(5), email="bob@epfl.ch")
    frame = extract_membership(
        settings(email_domains={"ethz.ch": "ETH Zurich", "epfl.ch": "EPFL"}), directory(keycloak, page_size=2), "w"
    )
    assert sorted(zip(frame["group"], frame["user_key"], strict=True)) == sorted(
        [("ETH Zurich", k) for k in keys(1, 2)] + [("EPFL", k) for k in keys(5)]
    )
    assert set(frame["group_kind"]) == {"email_domain"}
    assert [r.arg("first") for r in keycloak.requests_to("/users")] == ["0", "2", "4"]


def test_user_list_file(tmp_path):
    (tmp_path / "pilot.yaml").write_text(yaml.safe_dump({"users": [uid(1), uid(2), uid(2)]}))
    s = GroupsSettings.from_mapping(
        {"user_lists": [{"name": "Pilot team", "file": "pilot.yaml"}]}, "d.yaml: deployment 'x'", str(tmp_path)
    )
    frame = extract_membership(s, None, "here")
    assert set(frame["user_key"]) == keys(1, 2) and len(frame) == 2
    assert set(frame["group"]) == {"Pilot team"} and set(frame["group_kind"]) == {"user_list"}
    (tmp_path / "pilot.yaml").write_text(yaml.safe_dump({"users": [uid(1), "jane@ethz.ch"]}))
    with pytest.raises(ConfigError, match=r"pilot.yaml: users\[1\]: expected a Keycloak user id.*user_lists\[0\]"):
        extract_membership(s, None, "deployment 'x'")
    (tmp_path / "pilot.yaml").unlink()
    with pytest.raises(ConfigError, match=r"deployment 'x': groups.user_lists\[0\].file: file .*pilot.yaml not found"):
        extract_membership(s, None, "deployment 'x'")


@pytest.mark.parametrize(
    "groups_yaml, message",
    [
        ("{min_size: 0}", r"groups.min_size: .*greater than or equal to 1"),
        ("{keycloak_groups: [{path: Academic Team}]}", r"groups.keycloak_groups\[0\].path: a group path like"),
        (
            "{keycloak_groups: [{path: /A, subgroup: true}]}",
            r"groups.keycloak_groups\[0\]: unknown key .subgroup. \(allowed: path, subgroups\)",
        ),
        ("{email_domains: {'@ethz.ch': ETH}}", r"groups.email_domains: '@ethz.ch' is not a domain name"),
        ("{email_domains: [ethz.ch]}", r"groups.email_domains: expected a mapping of domain -> institution"),
        ("{colour: red}", r"groups: unknown key .colour."),
        ("{base_dir: /etc}", r"groups: unknown key .base_dir."),
    ],
)
def test_bad_groups_config_names_file_deployment_and_key(tmp_path, groups_yaml, message):
    path = tmp_path / "deployments.yaml"
    path.write_text(
        "deployments:\n"
        f"  - {{name: alpha, start_date: 2025-01-01, sources: {{demo: {{users: 10}}}}, groups: {groups_yaml}}}\n"
    )
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: deployment 'alpha': groups")


def test_groups_from_keycloak_need_a_directory(tmp_path, fixture_source):
    path = tmp_path / "deployments.yaml"
    path.write_text(
        "deployments:\n  - name: alpha\n    start_date: 2025-01-01\n    sources: {fixture: {events_file: x}}\n"
        "    groups: {keycloak_groups: [{path: /Team}]}\n"
    )
    with pytest.raises(ConfigError, match="deployment 'alpha': groups: .*sources.keycloak"):
        load_config(path)


# -- snapshots and group metrics -------------------------------------------------


def _events() -> list[dict]:
    return [
        ev("2025-03-04T10:00:00+00:00", uid(1), "start_session"),  # A
        ev("2025-03-05T10:00:00+00:00", uid(2), "login"),  # B
        ev("2025-03-06T10:00:00+00:00", uid(5), "commit"),  # E
        ev("2025-03-06T11:00:00+00:00", uid(6), "login"),  # F, not yet a member
        ev("2025-03-06T12:00:00+00:00", uid(99), "login"),  # X, never a member
        ev("2025-03-11T10:00:00+00:00", uid(1), "login"),  # A
        ev("2025-03-12T10:00:00+00:00", uid(3), "commit"),  # C
        ev("2025-03-12T11:00:00+00:00", uid(5), "start_session"),  # E, has left
        ev("2025-03-14T10:00:00+00:00", uid(6), "start_session"),  # F, has joined
    ]


@pytest.fixture
def history(tmp_path, keycloak, fixture_source):
    """Extracted events of W0..W2, and the two Keycloak snapshots (W1 and W2) in local storage."""
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(e) for e in _events()) + "\n")
    path = tmp_path / "deployments.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    {
                        "name": "alpha",
                        "start_date": "2025-02-24",
                        "sources": {"fixture": {"events_file": str(events)}},
                        "groups": {"user_lists": [{"name": "Pilot", "file": "pilot.yaml"}]},
                    }
                ]
            }
        )
    )
    (tmp_path / "pilot.yaml").write_text(yaml.safe_dump({"users": [uid(1), uid(2)]}))
    config = load_config(path)
    storage = LocalStorage(tmp_path / "data")
    extract_days(storage, config, "2025-02-24", "2025-03-16")
    # The deployment reads /Team from the simulated Keycloak, and the pilot list from its file.
    base = config.deployment("alpha")
    team_settings = GroupsSettings.from_mapping(
        {"keycloak_groups": [{"path": "/Team"}], "user_lists": [{"name": "Pilot", "file": "pilot.yaml"}]},
        "here",
        str(tmp_path),
    )
    deployment = Deployment(base.name, base.start_date, base.sources, groups=team_settings)
    team = keycloak.add_group("Team", members=[uid(n) for n in (1, 2, 3, 4, 5)])
    kc = directory(keycloak)
    first = groups.take_snapshot(storage, deployment, W1, dt.datetime(2025, 3, 10, 4, tzinfo=UTC), {}, kc, False)
    keycloak.remove_member(team, uid(5))
    keycloak.add_member(team, uid(6))
    second = groups.take_snapshot(storage, deployment, W2, dt.datetime(2025, 3, 17, 4, tzinfo=UTC), {}, kc, False)
    return storage, deployment, first, second, team


def _row(frame, start, group, metric, deployment="alpha"):
    rows = frame[
        (frame["period_start"] == start)
        & (frame["group"] == group)
        & (frame["metric"] == metric)
        & (frame["deployment"] == deployment)
    ]
    assert len(rows) == 1, (start, group, metric, deployment)
    return rows.iloc[0]


def test_member_who_leaves_and_one_who_joins_between_snapshots(history):
    storage, deployment, first, second, _ = history
    assert (first.snapshot_date, second.snapshot_date) == (dt.date(2025, 3, 10), dt.date(2025, 3, 17))
    frame = groups.group_metrics(storage, [deployment], load_catalog(), "week", [W0, W1, W2])
    # W1 uses the snapshot of 03-10: A B C D E. Active: A, B, E. Sessions: A. Commits: E.
    r = _row(frame, W1, "/Team", "start_session")
    assert (r.members, r.active_members, r.users, r.pct_of_members, r.pct_of_active_members) == (5, 3, 1, 20.0, 33.33)
    assert r.membership_as_of == dt.date(2025, 3, 10) and r.group_kind == "keycloak_group"
    assert r.withheld_reason is None
    assert _row(frame, W1, "/Team", "commit").users == 1
    assert _row(frame, W1, "/Team", "active_users").users == 3
    assert _row(frame, W1, "/Team", "active_users").pct_of_members == 60.0
    # W2 uses the snapshot of 03-17: A B C D F. Active: A, C, F (E has left). Sessions: F. Commits: C.
    r = _row(frame, W2, "/Team", "start_session")
    assert (r.members, r.active_members, r.users, r.pct_of_members) == (5, 3, 1, 20.0)
    assert r.membership_as_of == dt.date(2025, 3, 17)
    assert _row(frame, W2, "/Team", "commit").users == 1
    # W0 ends (03-03) before the first snapshot: it uses the earliest one, and says so.
    r = _row(frame, W0, "/Team", "active_users")
    assert r.membership_as_of == dt.date(2025, 3, 10) and (r.members, r.active_members) == (5, 0)


def test_monthly_metrics_use_the_days_of_the_month(history):
    storage, deployment, *_ = history
    frame = groups.group_metrics(storage, [deployment], load_catalog(), "month", [dt.date(2025, 3, 1)])
    # March ends 04-01: the latest snapshot by then is 03-17 (A B C D F). In March: A session+login,
    # B login, C commit, F login+session. E (left) is not counted.
    r = _row(frame, dt.date(2025, 3, 1), "/Team", "start_session")
    assert (r.members, r.active_members, r.users, r.pct_of_members, r.pct_of_active_members) == (5, 4, 2, 40.0, 50.0)
    assert _row(frame, dt.date(2025, 3, 1), "/Team", "commit").users == 1


def test_a_group_below_the_minimum_size_is_withheld(history):
    storage, deployment, *_ = history
    frame = groups.group_metrics(storage, [deployment], load_catalog(), "week", [W1])
    pilot = frame[frame["group"] == "Pilot"]  # 2 members < 5
    assert len(pilot) == len(frame[frame["group"] == "/Team"])  # every metric still has a row
    assert pilot[["members", "active_members", "users", "pct_of_members"]].isna().all().all()
    assert pilot["withheld_reason"].str.contains("fewer than 5 members").all()
    # The all rollup withholds it too.
    assert frame[(frame["group"] == "Pilot") & (frame["deployment"] == "all")]["members"].isna().all()


def test_an_old_partition_keeps_its_snapshot(history, keycloak):
    storage, deployment, first, _, team = history
    keycloak.add_member(team, uid(7))
    later = dt.datetime(2025, 4, 7, 4, tzinfo=UTC)  # W1 ended four weeks ago
    kept = groups.take_snapshot(storage, deployment, W1, later, {}, directory(keycloak), False)
    assert not kept.taken and kept.snapshot_date == first.snapshot_date and kept.key == first.key
    assert "no membership history" in kept.note
    # The partition of the week just ended is replaced (its old object removed).
    w3 = dt.date(2025, 3, 31)
    a = groups.take_snapshot(storage, deployment, w3, dt.datetime(2025, 4, 7, 4, tzinfo=UTC), {}, directory(keycloak))
    b = groups.take_snapshot(storage, deployment, w3, dt.datetime(2025, 4, 8, 4, tzinfo=UTC), {}, directory(keycloak))
    assert a.taken and b.taken and b.snapshot_date == dt.date(2025, 4, 8)
    assert [s for w, s, _ in groups.snapshot_index(storage, "alpha") if w == w3] == [dt.date(2025, 4, 8)]


def test_choose_snapshot():
    index = [(W1, dt.date(2025, 3, 10), "a"), (W2, dt.date(2025, 3, 17), "b")]
    assert groups.choose_snapshot(index, dt.date(2025, 3, 3)) == (dt.date(2025, 3, 10), "a")  # before the first
    assert groups.choose_snapshot(index, dt.date(2025, 3, 10)) == (dt.date(2025, 3, 10), "a")  # on its day
    assert groups.choose_snapshot(index, dt.date(2025, 3, 16)) == (dt.date(2025, 3, 10), "a")
    assert groups.choose_snapshot(index, dt.date(2025, 4, 1)) == (dt.date(2025, 3, 17), "b")
    assert groups.choose_snapshot([], dt.date(2025, 4, 1)) is None


# -- no e-mail anywhere ----------------------------------------------------------

_EMAIL = re.compile(rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


def assert_no_email_stored(root) -> int:
    """Scan every stored file, raw bytes and (for Parquet) every decoded value; returns files scanned."""
    files = [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes()
        assert not _EMAIL.search(data), path
        if path.suffix == ".parquet":
            table = pq.read_table(io.BytesIO(data))
            for column in table.columns:
                for value in column.to_pylist():
                    assert not (isinstance(value, str) and contains_email(value)), (path, value)
    return len(files)


def test_no_email_is_stored(history, keycloak, tmp_path):
    storage, deployment, *_ = history
    for n in range(1, 8):
        keycloak.add_user(uid(n), email=f"person{n}@inf.ethz.ch")
    with_domains = Deployment(
        deployment.name,
        deployment.start_date,
        deployment.sources,
        groups=GroupsSettings.from_mapping(
            {"keycloak_groups": [{"path": "/Team"}], "email_domains": {"ethz.ch": "ETH Zurich"}}, "here", "."
        ),
    )
    snap = groups.take_snapshot(
        storage, with_domains, W2, dt.datetime(2025, 3, 17, 5, tzinfo=UTC), {}, directory(keycloak), False
    )
    eth = groups.read_snapshot(storage, snap.key)
    assert set(eth.loc[eth["group"] == "ETH Zurich", "user_key"]) == keys(1, 2, 3, 4, 5, 6, 7)
    frame = groups.group_metrics(storage, [with_domains], load_catalog(), "week", [W2])
    storage.write_frame("metrics/group_metrics_weekly/period=2025-03-10/group_metrics_weekly.parquet", frame)
    assert assert_no_email_stored(tmp_path / "data") > 20
    # The scan itself finds an address where there is one.
    (tmp_path / "data" / "leak.txt").write_text("jane@inf.ethz.ch")
    with pytest.raises(AssertionError):
        assert_no_email_stored(tmp_path / "data")


def test_read_group_metrics_filters(history):
    from renku_metrics import read_group_metrics

    storage, deployment, *_ = history
    frame = groups.group_metrics(storage, [deployment], load_catalog(), "week", [W1, W2])
    for start, rows in frame.groupby("period_start"):
        storage.write_frame(f"metrics/group_metrics_weekly/period={start}/group_metrics_weekly.parquet", rows)
    read = read_group_metrics("week", group="/Team", deployment="alpha", storage=storage)
    assert set(read["period_start"]) == {W1, W2} and set(read["group"]) == {"/Team"}
    assert set(read["deployment"]) == {"alpha"} and str(read["members"].dtype) == "Int64"
    assert {"period_start", "deployment", "group", "members", "metric", "users", "pct_of_members"} <= set(read)
    assert isinstance(read["membership_as_of"].iloc[0], dt.date)
    assert read_group_metrics("week", storage=storage, complete_only=True).empty  # no denominator stored
    pd.testing.assert_series_equal(
        read[read["metric"] == "start_session"]["users"].reset_index(drop=True),
        pd.Series([1, 1], dtype="Int64", name="users"),
    )


# -- the assets, materialized ----------------------------------------------------


def test_group_assets_materialize_with_their_tables(tmp_path):
    """Membership and weekly group metrics of a demo deployment, materialized with dagster.materialize
    against local storage: each partition's metadata shows its own group table, and nothing stored
    holds an e-mail address (the demo's users all have one)."""
    from dagster import AssetKey, DagsterInstance, materialize

    from renku_metrics import read_group_metrics
    from renku_metrics.core.sources.demo import ACADEMIC_TEAM, DemoDirectory
    from renku_metrics.defs.build import build_defs
    from renku_metrics.defs.clock import NOW_TAG
    from renku_metrics.defs.metadata import table_rows
    from renku_metrics.defs.resources import MetricsStorageResource

    path = tmp_path / "deployments.yaml"
    path.write_text(
        "deployments:\n"
        "  - name: demo\n    start_date: 2025-03-03\n"
        "    sources: {demo: {seed: 5, users: 400, academic_team: 12, small_team: 2}}\n"
        "    groups:\n      keycloak_groups: [{path: /SDSC/Academic Team}, {path: /SDSC/Data Stewards}]\n"
        "      email_domains: {ethz.ch: ETH Zurich, epfl.ch: EPFL}\n"
    )
    config = load_config(path)
    root = tmp_path / "data"
    storage = LocalStorage(root)
    extract_days(storage, config, "2025-03-03", "2025-03-16")
    defs = build_defs(config=config, storage_root=str(root))
    graph = defs.resolve_asset_graph()
    wanted = {AssetKey("active_users_weekly"), AssetKey(["group_membership", "demo"]), AssetKey("group_metrics_weekly")}
    assets = [a for a in defs.assets if set(a.keys) & wanted]
    assert graph.get(AssetKey("group_metrics_weekly")).partitions_def.get_partition_keys()[0] == "2025-03-03"
    with DagsterInstance.ephemeral() as instance:
        for week in ("2025-03-03", "2025-03-10"):
            result = materialize(
                assets,
                partition_key=week,
                instance=instance,
                resources={"metrics_storage": MetricsStorageResource(root=str(root))},
                tags={NOW_TAG: "2025-03-17T04:00:00Z"},
            )
            assert result.success
        frame = read_group_metrics("week", storage=storage)
        for week in (dt.date(2025, 3, 3), dt.date(2025, 3, 10)):
            record = instance.fetch_materializations(AssetKey("group_metrics_weekly"), limit=10).records
            meta = next(r for r in record if r.asset_materialization.partition == week.isoformat())
            meta = meta.asset_materialization.metadata
            rows = {(r["deployment"], r["group"]): r for r in table_rows(meta["groups"])}
            expected = frame[(frame["period_start"] == week) & (frame["metric"] == "active_users")]
            assert len(rows) == len(expected) > 0
            for r in expected.itertuples():
                shown = rows[(r.deployment, r.group)]
                assert shown["members"] == (None if pd.isna(r.members) else int(r.members))
                assert shown["membership_as_of"] == str(r.membership_as_of)
            team = expected[(expected["group"] == "/SDSC/Academic Team") & (expected["deployment"] == "demo")]
            # The demo directory asked directly, on the week's end, for the team's members.
            on = week + dt.timedelta(days=7)
            members = DemoDirectory(config.deployment("demo").sources["demo"], on).group_members(ACADEMIC_TEAM, True)
            assert meta["demo//SDSC/Academic Team/members"].value == int(team["members"].iloc[0]) == len(members) > 5
            stewards = expected[expected["group"] == "/SDSC/Data Stewards"]
            assert stewards["withheld_reason"].notna().all()  # 2 members < 5
        # The demo knows past membership: each week's snapshot is of that week's end.
        assert set(frame["membership_as_of"]) == {dt.date(2025, 3, 10), dt.date(2025, 3, 17)}
        snaps = instance.fetch_materializations(AssetKey(["group_membership", "demo"]), limit=5).records
        assert {r.asset_materialization.metadata["snapshot_date"].value for r in snaps} == {
            "2025-03-10",
            "2025-03-17",
        }
    assert set(frame["deployment"]) == {"demo", "all"}
    assert assert_no_email_stored(root) > 30


def test_a_range_of_old_partitions_reads_keycloak_once(history, keycloak):
    storage, deployment, _, _, team = history
    before = len(keycloak.requests_to(f"/groups/{team}/members"))
    cache: dict = {}
    now = dt.datetime(2025, 6, 2, 4, tzinfo=UTC)
    snaps = [
        groups.take_snapshot(storage, deployment, w, now, {}, directory(keycloak), False, cache=cache)
        for w in (dt.date(2025, 1, 6), dt.date(2025, 1, 13))
    ]
    assert [s.snapshot_date for s in snaps] == [dt.date(2025, 6, 2)] * 2 and all(s.taken for s in snaps)
    assert len(keycloak.requests_to(f"/groups/{team}/members")) == before + 1


# -- the demo's groups -----------------------------------------------------------


def test_demo_teams_change_over_time_and_the_academic_team_is_active():
    from renku_metrics.core.sources.demo import ACADEMIC_TEAM, SMALL_TEAM, DemoDirectory
    from renku_metrics.core.sources.demo import Settings as DemoSettings
    from renku_metrics.core.sources.demo import Source as DemoSource

    s = DemoSettings(seed=42, users=6000, academic_team=40)
    early, late = DemoDirectory(s, dt.date(2025, 1, 6)), DemoDirectory(s, dt.date(2026, 12, 1))
    before, after = early.group_members(ACADEMIC_TEAM, True), late.group_members(ACADEMIC_TEAM, True)
    assert before - after and after - before  # some left the team, others joined it
    assert 25 <= len(before) <= 45 and 25 <= len(after) <= 45  # a few dozen
    assert DemoDirectory(s, dt.date(2026, 12, 1)).group_members(ACADEMIC_TEAM, True) == after  # deterministic
    assert len(late.group_members(SMALL_TEAM, True)) == 3
    assert late.group_members("/SDSC", True) == after | late.group_members(SMALL_TEAM, True)
    with pytest.raises(SourceError, match="group '/Nope' not found"):
        late.group_members("/Nope", True)
    # Without academic_team (the default) the demo has no teams.
    plain = DemoSettings(seed=42, users=6000)
    with pytest.raises(SourceError):
        DemoDirectory(plain, dt.date(2025, 1, 6)).group_members(ACADEMIC_TEAM, True)
    # About half of the team starts a session in a month (a target of 40-60% is plausible).
    source = DemoSource("demo", s)
    for month_start, month_end in (
        (dt.date(2025, 10, 1), dt.date(2025, 11, 1)),
        (dt.date(2026, 3, 1), dt.date(2026, 4, 1)),
    ):
        members = {pseudonymize_user(u) for u in DemoDirectory(s, month_end).group_members(ACADEMIC_TEAM, True)}
        days = [month_start + dt.timedelta(days=i) for i in range((month_end - month_start).days)]
        frame = pd.concat([source.generate_day(d) for d in days])
        sessions = set(frame.loc[frame["action"] == "start_session", "user_id"]) & members
        assert 0.35 <= len(sessions) / len(members) <= 0.65, (month_start, len(sessions), len(members))


def test_snapshots_on_s3_replace_the_weeks_object(keycloak, s3_endpoint, s3_bucket):
    """On S3 (the moto server), rerunning the week just ended replaces its snapshot object whole."""
    from renku_metrics.core.storage import open_storage

    storage = open_storage(f"s3://{s3_bucket}/metrics", endpoint_url=s3_endpoint)
    team = keycloak.add_group("Team", members=[uid(n) for n in range(1, 7)])
    deployment = Deployment(
        "alpha",
        dt.date(2025, 1, 6),
        {},
        groups=GroupsSettings.from_mapping({"keycloak_groups": [{"path": "/Team"}]}, "here", "."),
    )
    first = groups.take_snapshot(
        storage, deployment, W1, dt.datetime(2025, 3, 10, 4, tzinfo=UTC), {}, directory(keycloak), False
    )
    keycloak.remove_member(team, uid(6))
    again = groups.take_snapshot(
        storage, deployment, W1, dt.datetime(2025, 3, 11, 4, tzinfo=UTC), {}, directory(keycloak), False
    )
    assert [(w, s) for w, s, _ in groups.snapshot_index(storage, "alpha")] == [(W1, dt.date(2025, 3, 11))]
    assert not storage.exists(first.key)
    assert set(groups.read_snapshot(storage, again.key)["user_key"]) == keys(1, 2, 3, 4, 5)


def test_the_next_weekly_run_no_longer_replaces_a_weeks_snapshot(history, keycloak):
    """W2 ended Mon 03-17: a rerun up to Sunday 03-23 replaces its snapshot; from Monday 03-24 (the
    next weekly run, which also reruns earlier weeks) it keeps it."""
    storage, deployment, _, second, team = history
    keycloak.add_member(team, uid(8))
    sunday = groups.take_snapshot(
        storage, deployment, W2, dt.datetime(2025, 3, 23, 23, tzinfo=UTC), {}, directory(keycloak), False
    )
    assert sunday.taken and sunday.snapshot_date == dt.date(2025, 3, 23) and sunday.key != second.key
    keycloak.add_member(team, uid(9))
    monday = groups.take_snapshot(
        storage, deployment, W2, dt.datetime(2025, 3, 24, 4, tzinfo=UTC), {}, directory(keycloak), False
    )
    assert not monday.taken and monday.key == sunday.key
    members = set(groups.read_snapshot(storage, monday.key).query("group == '/Team'")["user_key"])
    assert members == keys(1, 2, 3, 4, 6, 8)
