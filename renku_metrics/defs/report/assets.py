"""The metrics report: one unpartitioned asset the team reads every Monday.

``metrics_report`` reads the stored weekly and monthly core actions and shows, in
its materialization: the latest complete week and month as a table, charts
(matplotlib PNGs embedded in the markdown metadata) of each core action's share of
active users and distinct users per deployment over the last 52 weeks and over all
months, provisional periods marked, and the latest complete week's headline
numbers as numeric metadata (so its Metadata → Plots view builds a weekly series), and
the targets: each target's latest status (value vs expected, deadline, weeks left) and
a chart per group target (value, expected path, goal line). The same report is
written under ``reports/metrics_report/`` in the storage root.

A sensor refreshes it after the weekly or monthly aggregates or target_status were
materialized (and none of their runs is still in progress).
"""

import base64

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    DefaultSensorStatus,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    asset,
    define_asset_job,
    sensor,
)

from renku_metrics.core.charts import (
    activation_chart,
    last_periods,
    latest_complete,
    png_bytes,
    report_charts,
    target_chart,
)
from renku_metrics.core.layout import report_key
from renku_metrics.core.readers import read_activation, read_metrics, read_releases, read_target_status
from renku_metrics.core.value.targets import latest_evaluation, targets_markdown
from renku_metrics.defs.aggregates.assets import markdown_core
from renku_metrics.defs.engagement.assets import markdown_activation
from renku_metrics.defs.keys import OWNERS, core_actions_name
from renku_metrics.defs.metadata import markdown_table
from renku_metrics.defs.resources import MetricsStorageResource
from renku_metrics.defs.run_limits import job_tags, scheduled_run_tags
from renku_metrics.defs.runs import settled_upstream

NAME = "metrics_report"
KEY = AssetKey(NAME)
UPSTREAM = [AssetKey(core_actions_name("week")), AssetKey(core_actions_name("month")), AssetKey("target_status")]
WEEKS_CHARTED = 52
_CAPTIONS = {
    "weekly_share": "Share of active users per core action, per deployment, last 52 weeks",
    "weekly_users": "Distinct users per core action, per deployment, last 52 weeks",
    "monthly_share": "Share of active users per core action, per deployment, all months",
    "monthly_users": "Distinct users per core action, per deployment, all months",
    "weekly_activation": "New users who did a core action within 7 and 28 days, per cohort week, last 52 weeks",
}


def _headline(frame: pd.DataFrame, prefix: str) -> dict:
    meta: dict = {}
    for r in frame.drop_duplicates("deployment").itertuples():
        meta[f"{prefix}/{r.deployment}/active_users"] = int(r.active_users)
    for r in frame.itertuples():
        meta[f"{prefix}/{r.deployment}/{r.metric}/users"] = int(r.users)
        if not pd.isna(r.pct):
            meta[f"{prefix}/{r.deployment}/{r.metric}/pct"] = float(r.pct)
    return meta


def targets_section(
    targets: pd.DataFrame, releases: pd.DataFrame | None = None
) -> tuple[list[str], dict[str, bytes], dict]:
    """The report's targets: (markdown lines, PNG per group target's chart, metadata)."""
    if targets.empty:
        return ["## Targets", "", "No target status stored yet (materialize target_status).", ""], {}, {}
    table = targets_markdown(targets)
    charts = {}
    latest = latest_evaluation(targets)
    for target, rows in latest[latest["group"].notna()].groupby("target", sort=True):
        first = rows.iloc[0]
        title = f"{target}: {first['metric']} {first['measure']} of {first['group']} ({first['deployment']}) per {first['period']}"
        charts[f"target_{target}"] = png_bytes(target_chart(rows, title, releases))
    return ["## Targets", "", table, ""], charts, {"targets": markdown_table(table)}


def build_report(
    weekly: pd.DataFrame,
    monthly: pd.DataFrame,
    targets: pd.DataFrame | None = None,
    releases: pd.DataFrame | None = None,
    activation: pd.DataFrame | None = None,
) -> tuple[str, dict[str, bytes], dict]:
    """(markdown of the tables, PNG per chart name, metadata: the tables and the headline numbers).
    ``activation``: rows of ``read_activation``, charted over the last 52 cohort weeks when given."""
    parts, meta = ["# Renku metrics report", ""], {}
    for label, frame in (("week", weekly), ("month", monthly)):
        start = latest_complete(frame)
        if start is None:
            parts += [f"No complete {label} yet.", ""]
            meta[f"latest_complete_{label}"] = MetadataValue.null()
            continue
        rows = frame[frame["period_start"] == start]
        parts += [f"## Latest complete {label}: {start}", "", markdown_core(rows), ""]
        meta[f"latest_complete_{label}"] = str(start)
        meta[f"latest_complete_{label}_table"] = markdown_table(markdown_core(rows))
        if label == "week":
            meta.update(_headline(rows, "week"))
    charts = {name: png_bytes(fig) for name, fig in report_charts(weekly, monthly, WEEKS_CHARTED, releases).items()}
    if targets is not None:
        lines, target_charts, target_meta = targets_section(targets, releases)
        parts += lines
        charts.update(target_charts)
        meta.update(target_meta)
    if activation is not None and not activation.empty:
        parts += _activation_section(activation, meta)
        recent = last_periods(activation, WEEKS_CHARTED)
        charts["weekly_activation"] = png_bytes(activation_chart(recent, _CAPTIONS["weekly_activation"]))
    return "\n".join(parts), charts, meta


def _activation_section(activation: pd.DataFrame, meta: dict) -> list[str]:
    """The latest complete activation cohort as a table (and its numbers in ``meta``)."""
    start = latest_complete(activation)
    if start is None:
        meta["latest_complete_activation_cohort"] = MetadataValue.null()
        return ["No complete activation cohort yet (a cohort is final 28 days after its week).", ""]
    rows = activation[activation["period_start"] == start]
    meta["latest_complete_activation_cohort"] = str(start)
    for r in rows.itertuples():
        for n in (7, 28):
            value = getattr(r, f"activation_{n}d")
            if not pd.isna(value):
                meta[f"activation/{r.deployment}/within_{n}d_pct"] = float(value)
    return [f"## Latest complete activation cohort: {start}", "", markdown_activation(rows), ""]


def _embedded(name: str, png: bytes) -> str:
    return f"![{_CAPTIONS.get(name, name)}](data:image/png;base64,{base64.b64encode(png).decode()})"


def build_report_asset() -> AssetsDefinition:
    @asset(
        key=KEY,
        deps=UPSTREAM,
        group_name="report",
        owners=OWNERS,
        kinds={"python", "matplotlib"},
        description=(
            "The weekly report: the latest complete week and month as a table (users and share of active users "
            "per deployment and core action), charts of each core action's share of active users and distinct "
            f"users per deployment over the last {WEEKS_CHARTED} weeks and over all months (provisional periods "
            "dashed with hollow markers; each release of the `releases` table a labelled dotted vertical "
            "line), and the latest complete week's numbers as metadata "
            "(`week/<deployment>/<metric>/pct`, `.../users`, `week/<deployment>/active_users`), which the Plots "
            "tab draws week by week; the targets: each target's latest status with value vs expected, deadline "
            "and weeks left, and a chart per group target (value, expected path, goal line); the share of each "
            "week's new users who did a core action within 7 and 28 days (`activation_weekly`, its latest complete "
            "cohort as a table and a chart). Also written to `reports/metrics_report/` in the storage root (report.md and "
            "one PNG per chart). Refreshed by `metrics_report_sensor` after the weekly or monthly aggregates "
            "or target_status change. Cannot see: anything the aggregates cannot (see `core_actions_weekly`); periods not yet "
            "aggregated."
        ),
    )
    def metrics_report(context: AssetExecutionContext, metrics_storage: MetricsStorageResource) -> MaterializeResult:
        storage = metrics_storage.get_storage()
        weekly = read_metrics("week", storage=storage)
        monthly = read_metrics("month", storage=storage)
        if weekly.empty and monthly.empty:
            raise RuntimeError(
                f"no weekly or monthly metrics under {storage.uri('metrics/')}: materialize "
                f"{UPSTREAM[0].to_user_string()} first"
            )
        # Releases (the releases asset's table, when it exists) are marked on every chart.
        text, charts, meta = build_report(
            weekly,
            monthly,
            read_target_status(storage=storage),
            read_releases(storage=storage),
            activation=read_activation(storage=storage),
        )
        for name, png in charts.items():
            storage.write_bytes(report_key(NAME, f"{name}.png"), png)
        linked = text + "\n" + "\n".join(f"![{_CAPTIONS.get(n, n)}]({n}.png)\n" for n in charts)
        storage.write_bytes(report_key(NAME, "report.md"), linked.encode())
        first = {k: v for k, v in meta.items() if k.startswith("latest_complete_")}
        metadata = {
            **first,
            **{f"chart_{name}": MetadataValue.md(_embedded(name, png)) for name, png in charts.items()},
            "report_uri": MetadataValue.path(storage.uri(report_key(NAME, "report.md"))),
            "weeks": int(weekly["period_start"].nunique()) if not weekly.empty else 0,
            "months": int(monthly["period_start"].nunique()) if not monthly.empty else 0,
            **{k: v for k, v in meta.items() if k not in first},
        }
        context.log.info("report written to %s", storage.uri(report_key(NAME, "")))
        return MaterializeResult(metadata=metadata)

    return metrics_report


def build_report_job_and_sensor(report: AssetsDefinition):
    job = define_asset_job(
        f"{NAME}_job", selection=[report.key], description="Rebuild the metrics report.", tags=job_tags(NAME)
    )

    @sensor(
        name=f"{NAME}_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Requests the report after core_actions_weekly, core_actions_monthly or target_status got a new materialization, "
            "once no run of theirs is queued or in progress (a backfill refreshes it when it is done)."
        ),
    )
    def report_sensor(context: SensorEvaluationContext):
        latest, skip = settled_upstream(context.instance, UPSTREAM, context.cursor)
        if skip:
            return SkipReason(skip)
        context.update_cursor(str(latest))
        return RunRequest(run_key=f"{NAME}@{latest}", tags=scheduled_run_tags())

    return job, report_sensor
