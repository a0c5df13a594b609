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
    defs = build_defs(config=load_config(config_file, env={}), storage_root=str(root))
    instance = DagsterInstance.ephemeral()
    for job, start, end in (
        ("demo_daily_extract", "2025-03-01", "2025-04-06"),
        ("weekly_metrics", "2025-03-03", "2025-03-31"),
        ("monthly_metrics", "2025-03-01", "2025-03-01"),
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
    assert sum(len(v) for v in images.values()) == 5  # weekly share + users, active users, monthly, lifecycle
    # Nothing written unless asked.
    assert not list(tmp_path.glob("*.png"))
    assert "Share (%) of each weekly cohort" in outputs and "wau_mau" in outputs
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
