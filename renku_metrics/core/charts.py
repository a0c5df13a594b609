"""Charts of the metrics over time (matplotlib), shared by the report asset and the notebook.

Every function takes the frames the readers return (``read_metrics``) and returns
a ``matplotlib.figure.Figure`` built without pyplot, so it works under any backend
(a Dagster run, Jupyter, a script) and never opens a window. ``png_bytes`` renders
one. Provisional rows (``complete == False``) are drawn dashed with hollow markers.
Given the releases table (``read_releases``), each release inside a panel's time span
is drawn as a labelled vertical dotted line (without it the charts are unchanged).
Plain Python, no Dagster.
"""

from __future__ import annotations

import io

import pandas as pd
from matplotlib.figure import Figure

from renku_metrics.core.periods import period_start_of

PROVISIONAL = "dashed, hollow: provisional (period not over or data incomplete)"
_MEASURES = {"pct": "% of active users", "users": "distinct users"}


def latest_complete(frame: pd.DataFrame):
    """period_start of the latest period whose rows are all complete (None if there is none)."""
    if frame.empty:
        return None
    done = frame.groupby("period_start")["complete"].all()
    done = done[done]
    return None if done.empty else done.index.max()


def last_periods(frame: pd.DataFrame, count: int | None) -> pd.DataFrame:
    """Rows of the last ``count`` periods (all when None)."""
    if count is None or frame.empty:
        return frame
    keep = sorted(frame["period_start"].unique())[-count:]
    return frame[frame["period_start"].isin(keep)]


def releases_in_panel(releases: pd.DataFrame | None, deployment: str, start, end) -> list[tuple[pd.Timestamp, str]]:
    """(date, name) of the releases to mark on a panel: the deployment's own, or every
    deployment's (each release once, at its earliest date) on an ``all`` panel; only those
    dated within [start, end]."""
    if releases is None or releases.empty:
        return []
    rows = releases if deployment in ("all", None) else releases[releases["deployment"] == deployment]
    rows = rows.assign(when=pd.to_datetime(rows["date"])).sort_values("when").drop_duplicates("release")
    rows = rows[(rows["when"] >= pd.Timestamp(start)) & (rows["when"] <= pd.Timestamp(end))]
    return list(zip(rows["when"], rows["release"].astype(str), strict=True))


def draw_releases(ax, marks: list[tuple[pd.Timestamp, str]]) -> None:
    """Each release as a dotted vertical line labelled with its name at the top of the panel."""
    for when, name in marks:
        ax.axvline(when, color="0.35", ls=":", lw=1)
        ax.text(
            when,
            0.98,
            f" {name}",
            transform=ax.get_xaxis_transform(),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color="0.3",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1},
        )


def _span(frame: pd.DataFrame):
    """First and last day covered by the periods of ``frame`` (weeks, or months when ``period`` says so)."""
    starts = pd.to_datetime(frame["period_start"])
    monthly = "period" in frame and (frame["period"] == "month").any()
    last = starts.max() + (pd.offsets.MonthEnd(0) if monthly else pd.Timedelta(days=6))
    return starts.min(), last


def metric_chart(frame: pd.DataFrame, measure: str, title: str, releases: pd.DataFrame | None = None) -> Figure:
    """One panel per deployment (``all`` first), one line per metric, of ``measure``
    ("pct" or "users") over the periods of ``frame``; ``releases`` marked on each panel."""
    if measure not in _MEASURES:
        raise ValueError(f"measure must be one of {sorted(_MEASURES)}, not {measure!r}")
    deployments = list(dict.fromkeys(frame["deployment"])) or ["(no data)"]
    deployments.sort(key=lambda d: d != "all")
    fig = Figure(figsize=(10, 2.6 * len(deployments) + 0.9), dpi=80)
    axes = fig.subplots(len(deployments), 1, sharex=True, squeeze=False)[:, 0]
    metrics = list(dict.fromkeys(frame["metric"])) if "metric" in frame else []
    colors = {m: f"C{i}" for i, m in enumerate(metrics)}
    for ax, deployment in zip(axes, deployments, strict=True):
        rows = frame[frame["deployment"] == deployment]
        for metric in metrics:
            series = rows[rows["metric"] == metric].sort_values("period_start")
            if series.empty:
                continue
            x = pd.to_datetime(series["period_start"])
            y = series[measure].astype("float64")
            done = series["complete"].astype(bool).to_numpy()
            color = colors[metric]
            ax.plot(x, y.where(done), marker="o", ms=3, color=color, label=metric)
            # Provisional points, joined to their complete neighbours by a dashed line.
            provisional = pd.Series(~done, index=series.index)
            near = provisional | provisional.shift(1, fill_value=False) | provisional.shift(-1, fill_value=False)
            ax.plot(x, y.where(near.to_numpy()), ls="--", color=color)
            ax.plot(x[~done], y[~done], ls="none", marker="o", ms=5, mfc="white", mec=color)
        if not rows.empty:
            draw_releases(ax, releases_in_panel(releases, deployment, *_span(rows)))
        ax.set_title(deployment, loc="left", fontsize=10)
        ax.set_ylabel(_MEASURES[measure])
        ax.grid(alpha=0.3)
        if measure == "pct":
            ax.set_ylim(bottom=0)
    if metrics:
        axes[0].legend(loc="lower left", bbox_to_anchor=(0, 1.08), ncol=min(len(metrics), 5), frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.text(0.99, 0.005, PROVISIONAL, ha="right", va="bottom", fontsize=8, color="0.4")
    fig.autofmt_xdate()
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return fig


def report_charts(
    weekly: pd.DataFrame, monthly: pd.DataFrame, weeks: int = 52, releases: pd.DataFrame | None = None
) -> dict[str, Figure]:
    """The report's charts: share of active users and distinct users, per deployment and
    core action, over the last ``weeks`` weeks and over all months, releases marked."""
    recent = last_periods(weekly, weeks)
    charts = {}
    for name, frame, span in (("weekly", recent, f"last {weeks} weeks"), ("monthly", monthly, "all months")):
        if frame.empty:
            continue
        share_title = f"Share of active users per core action, {span}"
        charts[f"{name}_share"] = metric_chart(frame, "pct", share_title, releases)
        charts[f"{name}_users"] = metric_chart(frame, "users", f"Distinct users per core action, {span}", releases)
    return charts


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def active_users_chart(frame: pd.DataFrame, title: str, releases: pd.DataFrame | None = None) -> Figure:
    """Active users (the denominator) per deployment over the periods of ``frame``
    (rows of ``read_active_users``); provisional periods hollow; ``releases`` marked."""
    fig = Figure(figsize=(10, 3.2), dpi=80)
    ax = fig.subplots()
    for i, (deployment, rows) in enumerate(frame.groupby("deployment", sort=False)):
        rows = rows.sort_values("period_start")
        x = pd.to_datetime(rows["period_start"])
        done = rows["complete"].astype(bool).to_numpy()
        ax.plot(x, rows["active_users"], marker=".", color=f"C{i}", label=deployment)
        ax.plot(x[~done], rows["active_users"][~done], ls="none", marker="o", mfc="white", mec=f"C{i}")
    if not frame.empty:
        shown = frame["deployment"].unique().tolist()
        rows = releases if releases is None or releases.empty else releases[releases["deployment"].isin(shown)]
        draw_releases(ax, releases_in_panel(rows, "all", *_span(frame)))
    ax.set_ylabel("active users")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def lifecycle_chart(frame: pd.DataFrame, title: str, releases: pd.DataFrame | None = None) -> Figure:
    """New, returning and resurrected users stacked above zero and dormant users below,
    one panel per deployment (rows of ``read_lifecycle``, ``all`` left out); ``releases`` marked."""
    deployments = [d for d in dict.fromkeys(frame["deployment"]) if d != "all"] or ["(no data)"]
    fig = Figure(figsize=(10, 2.6 * len(deployments) + 0.9), dpi=80)
    axes = fig.subplots(len(deployments), 1, sharex=True, squeeze=False)[:, 0]
    for ax, deployment in zip(axes, deployments, strict=True):
        rows = frame[frame["deployment"] == deployment].sort_values("period_start")
        x = pd.to_datetime(rows["period_start"])
        width = 5 if len(rows) < 2 else max(1, 0.7 * (x.diff().dt.days.median()))
        ax.bar(x, rows["returning_users"], width=width, label="returning")
        ax.bar(x, rows["new_users"], width=width, bottom=rows["returning_users"], label="new")
        bottom = rows["returning_users"] + rows["new_users"]
        ax.bar(x, rows["resurrected_users"], width=width, bottom=bottom, label="resurrected")
        ax.bar(x, -rows["dormant_users"], width=width, label="dormant")
        ax.axhline(0, color="black", lw=0.5)
        if not rows.empty:
            draw_releases(ax, releases_in_panel(releases, deployment, *_span(rows)))
        ax.set_title(deployment, loc="left", fontsize=10)
        ax.set_ylabel("users")
    axes[0].legend(loc="lower left", bbox_to_anchor=(0, 1.08), ncol=4, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def target_chart(rows: pd.DataFrame, title: str, releases: pd.DataFrame | None = None) -> Figure:
    """One target's latest evaluation (its rows of ``read_target_status`` with the largest
    ``evaluated_week``): the value per period, the expected path from the baseline to the
    goal, the projected trend at the deadline and the goal line; periods without a value
    (no_data) are left as gaps; the target's deployment's releases marked."""
    rows = rows.sort_values("period_start")
    fig = Figure(figsize=(10, 3.2), dpi=80)
    ax = fig.subplots()
    if rows.empty:
        ax.text(0.5, 0.5, "no evaluation stored", ha="center", va="center", transform=ax.transAxes)
    else:
        first = rows.iloc[0]
        x = pd.to_datetime(rows["period_start"])
        deadline = pd.Timestamp(first["by"])
        # The path and the projection are per period: they reach the deadline at its period's start.
        decisive = pd.Timestamp(period_start_of(first["period"], pd.Timestamp(first["by"]).date()))
        ax.plot(x, rows["value"].astype("float64"), marker="o", ms=4, color="C0", label="value")
        ax.plot(x, rows["expected"].astype("float64"), ls="--", color="C2", label="expected path")
        baseline, goal = first["baseline"], float(first["goal"])
        if not pd.isna(baseline):
            start = x[rows["expected"].notna().to_numpy()].min()
            ax.plot([start, decisive], [baseline, goal], ls=":", color="C2", alpha=0.6)
        ax.axhline(goal, color="C3", lw=1, label=f"goal {first['comparison']} {goal:g}")
        ax.axvline(deadline, color="grey", lw=0.8, ls=":", label=f"deadline {deadline.date()}")
        projected = rows["projected"].dropna()
        if not projected.empty:
            ax.plot([decisive], [projected.iloc[-1]], marker="x", color="C1", ls="none", label="projected")
        if rows["value"].isna().all():
            reason = str(rows["reason"].iloc[-1])
            ax.text(0.02, 0.2, f"no data: {reason}"[:110], transform=ax.transAxes, fontsize=8, va="center")
        margin = pd.Timedelta(days=7)
        ax.set_xlim(min(x.min(), deadline) - margin, max(x.max(), deadline) + margin)
        draw_releases(ax, releases_in_panel(releases, first["deployment"], x.min(), x.max()))
        status = rows["status"].iloc[-1]
        ax.set_title(f"status: {status}", loc="left", fontsize=10)
        ax.set_ylabel("% of members" if first["measure"] == "pct_of_members" else first["measure"])
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=11)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def activation_chart(frame: pd.DataFrame, title: str) -> Figure:
    """Activation of each week's new users (rows of ``read_activation``): one panel per deployment
    (``all`` first), one line per window (core action within 7 and within 28 days, % of the
    cohort) over the cohort weeks; cohorts not yet final hollow, joined by a dashed line."""
    deployments = list(dict.fromkeys(frame["deployment"])) or ["(no data)"]
    deployments.sort(key=lambda d: d != "all")
    windows = [(c, f"within {c.split('_')[1][:-1]} days") for c in ("activation_7d", "activation_28d") if c in frame]
    fig = Figure(figsize=(10, 2.4 * len(deployments) + 0.9), dpi=80)
    axes = fig.subplots(len(deployments), 1, sharex=True, squeeze=False)[:, 0]
    for ax, deployment in zip(axes, deployments, strict=True):
        rows = frame[frame["deployment"] == deployment].sort_values("period_start")
        x = pd.to_datetime(rows["period_start"])
        done = rows["complete"].astype(bool).to_numpy()
        for i, (col, label) in enumerate(windows):
            y = rows[col].astype("float64")
            ax.plot(x, y.where(done), marker="o", ms=3, color=f"C{i}", label=label)
            ax.plot(x, y, ls="--", color=f"C{i}", alpha=0.6)
            ax.plot(x[~done], y[~done], ls="none", marker="o", ms=5, mfc="white", mec=f"C{i}")
        ax.set_title(deployment, loc="left", fontsize=10)
        ax.set_ylabel("% of new users")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower left", bbox_to_anchor=(0, 1.08), ncol=2, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.text(
        0.99,
        0.005,
        "hollow: cohort not final (windows still open or data incomplete)",
        ha="right",
        va="bottom",
        fontsize=8,
        color="0.4",
    )
    fig.autofmt_xdate()
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return fig
