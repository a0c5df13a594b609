import re
from pathlib import Path

import pytest
import yaml

from renku_metrics.core.catalog import CATALOG_FILE, CatalogError, load_catalog, metric_table_markdown, parse_catalog

REPO = Path(__file__).resolve().parent.parent


def entry(**changes):
    item = {
        "id": "commit",
        "title": "Users who commit",
        "description": "Distinct committers.",
        "actions": ["commit"],
        "owner": "renku-product",
        "status": "active",
        "sources": {"renku1": "GitLab"},
        "known_gaps": ["Local commits never pushed."],
    }
    item.update(changes)
    return item


def test_shipped_catalog_has_the_pitch_metrics():
    catalog = load_catalog()
    assert [m.id for m in catalog.computed()] == [
        "commit",
        "create_dataset",
        "start_session",
        "run_workflow",
        "collaborate",
        "start_shared_session",
    ]
    assert catalog.get("collaborate").actions == ("collaborate",)
    session = catalog.get("start_session")
    assert any("renku session start" in gap for gap in session.known_gaps)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"actions": ["clone"]}, "metric 'commit': field 'actions' has unknown action 'clone'"),
        ({"actions": []}, "metric 'commit': field 'actions' must be a non-empty list"),
        ({"status": "live"}, "metric 'commit': field 'status' must be one of"),
        ({"known_gaps": []}, "metric 'commit': field 'known_gaps'"),
        ({"colour": "red"}, "metric 'commit': unknown field 'colour'"),
        ({"id": "Commit Users"}, "field 'id' must match"),
        ({"title": ""}, "metric 'commit': field 'title' must be non-empty"),
        ({"sources": {"renku3": "x"}}, "metric 'commit': field 'sources' has bad entry 'renku3'"),
        (
            # Targets moved to their own file: a catalog entry that still has them says where they went.
            {"targets": [{"measure": "pct", "period": "week", "op": ">=", "value": 30, "by": "2027-01-01"}]},
            "metric 'commit': field 'targets' is no longer read here: targets live in their own file",
        ),
    ],
)
def test_invalid_entries_name_entry_and_field(changes, message):
    with pytest.raises(CatalogError) as info:
        parse_catalog({"metrics": [entry(**changes)]}, "catalog.yaml")
    assert message in str(info.value)


def test_duplicate_ids_rejected():
    with pytest.raises(CatalogError, match="duplicate id 'commit'"):
        parse_catalog({"metrics": [entry(), entry()]}, "catalog.yaml")


def test_file_errors(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("metrics: [")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(bad)
    duplicate = tmp_path / "duplicate.yaml"
    duplicate.write_text(
        CATALOG_FILE.read_text().replace("    status: active\n", "    status: active\n    status: active\n", 1)
    )
    with pytest.raises(CatalogError, match="duplicate key 'status'"):
        load_catalog(duplicate)
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "missing.yaml")


def test_design_doc_metric_table_matches_catalog():
    design = (REPO / "docs" / "design.md").read_text()
    assert metric_table_markdown(load_catalog()) in design, (
        "docs/design.md's metric table is out of date: paste renku_metrics.core.catalog.metric_table_markdown(load_catalog())"
    )


def test_asset_descriptions_mention_every_computed_metric_and_its_gaps():
    from renku_metrics.definitions import build_defs

    defs = build_defs()
    catalog = load_catalog()
    graph = defs.resolve_asset_graph()
    for name in ("core_actions_weekly", "core_actions_monthly"):
        from dagster import AssetKey

        description = graph.get(AssetKey(name)).description
        for metric in catalog.computed():
            assert f"**{metric.id}**" in description
            for gap in metric.known_gaps:
                assert gap in description


def test_catalog_file_is_in_package():
    assert CATALOG_FILE.exists()
    raw = yaml.safe_load(CATALOG_FILE.read_text())
    assert all(re.match(r"^[a-z_]+$", m["id"]) for m in raw["metrics"])


def test_duplicate_keys_in_the_catalog_name_file_and_key(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG_FILE.read_text().replace("    owner: renku-product\n", "    owner: a\n    owner: b\n", 1))
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert str(path) in str(info.value) and "duplicate key 'owner'" in str(info.value)
    assert "\n" not in str(info.value)
