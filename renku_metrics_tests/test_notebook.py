"""The example notebook executes against real stored metrics."""

import base64
from pathlib import Path

import nbformat
from dagster import DagsterInstance
from nbclient import NotebookClient

from renku_metrics.core.config import load_config
from renku_metrics.definitions import build_defs
from renku_metrics.defs.demo_run import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

REPO = Path(__file__).resolve().parent.parent


def test_notebook_executes(tmp_path, monkeypatch):
    config_file = tmp_path / "deployments.yaml"
    config_file.write_text("deployments:\n  - {name: demo, start_date: 2025-03-01, sources: {demo: {users: 1000}}}\n")
    root = tmp_path / "data"
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        "targets:\n"
        "  - {id: committers, metric: commit, measure: users, period: week, comparison: '>=', value: 1,\n"
        "     start: 2025-03-03, by: 2025-06-30, owner: team, why: Anyone committing.}\n"
        "  - {id: team, metric: start_session, measure: pct_of_members, deployment: demo, group: /T,\n"
        "     period: month, comparison: '>=', value: 50, start: 2025-03-01, by: 2025-06-30, owner: team, why: x}\n"
    )
    defs = build_defs(
        config=load_config(config_file, env={}), storage_root=str(root), env={"RENKU_METRICS_TARGETS": str(targets)}
    )
    instance = DagsterInstance.ephemeral()
    for job, start, end in (
        ("demo_daily_extract", "2025-03-01", "2025-04-06"),
        ("weekly_metrics", "2025-03-03", "2025-03-31"),
        ("monthly_metrics", "2025-03-01", "2025-03-01"),
        ("target_status_job", "2025-03-31", "2025-03-31"),
    ):
        assert (
            defs.resolve_job_def(job)
            .execute_in_process(
                instance=instance,
                run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
                tags={ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end},
            )
            .success
        )

    notebook = nbformat.read(str(REPO / "notebooks" / "renku_metrics.ipynb"), as_version=4)
    monkeypatch.setenv("RENKU_METRICS_STORAGE", str(root))
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = "\n".join(
        o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    )
    assert "5 weekly rows" not in outputs and "weekly rows" in outputs
    # Every chart is shown inline: an image output per chart, in the cells that draw them.
    images = {
        i: [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
    }
    drawn = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code" and "show(charts." in cell.source]
    assert len(drawn) >= 4
    for i in drawn:
        assert images[i] and all(len(base64.b64decode(png)) > 10_000 for png in images[i]), i
    # weekly share + users, active users, monthly, lifecycle, the group target
    assert sum(len(v) for v in images.values()) == 6
    # Nothing written unless asked.
    assert not list(tmp_path.glob("*.png"))
    assert "Share (%) of each weekly cohort" in outputs and "wau_mau" in outputs
    # The targets, read from storage: the committers met in the week of 03-31; the group has no metrics.
    assert "Targets, latest complete period" in outputs
    committers = next(line for line in outputs.splitlines() if line.strip().startswith("committers"))
    assert "2025-03-31" in committers and " met " in committers
    assert "no group metrics stored" in outputs
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
