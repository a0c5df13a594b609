"""Releases and their measured impact: the ``releases`` and ``release_impact`` assets.

``releases`` lists, per deployment configured with ``releases:`` in deployments.yaml,
the releases its forges (GitHub, GitLab) publish and its YAML list names, dated when
they went live there (core/value/releases.py). ``release_impact`` judges each release
at each deployment, metric by metric, from the stored weekly aggregates (and the
group_metrics_weekly table where it exists): core/value/impact.py. Both tables are
rewritten whole by each run; the schedule in schedules.py refreshes both every day.
"""

import os

import pandas as pd
from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, MaterializeResult, MetadataValue, asset

from renku_metrics.core.config import MetricsConfig
from renku_metrics.core.layout import release_impact_key, releases_key
from renku_metrics.core.readers import read_metrics, read_releases
from renku_metrics.core.value.impact import load_group_weekly, release_impact, weekly_series
from renku_metrics.core.value.releases import collect_releases
from renku_metrics.defs.clock import run_now
from renku_metrics.defs.keys import OWNERS, core_actions_name
from renku_metrics.defs.metadata import table
from renku_metrics.defs.resources import MetricsStorageResource

RELEASES = AssetKey("releases")
RELEASE_IMPACT = AssetKey("release_impact")
VERDICT_ROWS_SHOWN = 60


def verdict_rows(frame: pd.DataFrame, limit: int = VERDICT_ROWS_SHOWN) -> list[dict]:
    """The verdict table shown on the asset page: the deployment-wide rows (no group), newest releases first."""
    rows = frame[frame["group"].isna()].sort_values(
        ["release_date", "deployment", "metric", "measure"], ascending=[False, True, True, True]
    )

    def num(value, digits=1):
        return None if pd.isna(value) else round(float(value), digits)

    return [
        {
            "release": r.release,
            "deployment": r.deployment,
            "date": str(r.release_date),
            "metric": r.metric,
            "measure": r.measure,
            "before": num(r.before),
            "after": num(r.after),
            "diff": num(r.diff),
            "ci": None if pd.isna(r.ci_low) else f"{r.ci_low:+.1f} to {r.ci_high:+.1f}",
            "verdict": r.verdict,
            "as_expected": None if pd.isna(r.as_expected) else bool(r.as_expected),
            "explanation": r.explanation,
        }
        for r in rows.head(limit).itertuples()
    ]


def build_release_assets(config: MetricsConfig) -> list[AssetsDefinition]:
    configured = {d.name: d.releases for d in config.deployments if d.releases is not None}
    settings = {name: (r.impact, r.calendar) for name, r in configured.items()}
    listed = ", ".join(sorted(configured)) or "none"

    @asset(
        key=RELEASES,
        group_name="releases",
        owners=OWNERS,
        kinds={"python", "github", "parquet"},
        description=(
            "Releases per deployment (configured under `releases:` in deployments.yaml; now: "
            f"{listed}): the GitHub or GitLab releases API (published releases whose tag matches the "
            "configured pattern, dated by `published_at` / `released_at`; drafts skipped) and a YAML list "
            "(a sentence, an expected effect, and per-deployment go-live dates that override the published "
            "date). One table, `metrics/releases/releases.parquet`, rewritten daily. Cannot see: when a "
            "version really went live at a deployment unless the YAML list says so; releases whose tag the "
            "pattern leaves out."
        ),
    )
    def releases(context: AssetExecutionContext, metrics_storage: MetricsStorageResource) -> MaterializeResult:
        storage = metrics_storage.get_storage()
        frame, counts = collect_releases(configured, os.environ, run_now(context).date())
        storage.write_frame(releases_key(), frame)
        latest = frame.sort_values("date").groupby("deployment").tail(3)
        return MaterializeResult(
            metadata={
                "dagster/row_count": len(frame),
                "dagster/uri": MetadataValue.path(storage.uri(releases_key())),
                "deployments": MetadataValue.md(
                    "\n".join(
                        f"- {d}: {c['releases']} releases ({c['github']} from GitHub, {c['gitlab']} from GitLab, "
                        f"{c['listed']} listed in YAML)"
                        for d, c in counts.items()
                    )
                    or "no deployment has `releases:` configured"
                ),
                "latest": table(
                    [
                        {"deployment": r.deployment, "release": r.release, "date": str(r.date), "source": r.source}
                        for r in latest.itertuples()
                    ]
                    or [{"deployment": "-", "release": "-", "date": "-", "source": "-"}]
                ),
            }
        )

    @asset(
        key=RELEASE_IMPACT,
        deps=[RELEASES, AssetKey(core_actions_name("week"))],
        group_name="releases",
        owners=OWNERS,
        kinds={"python", "statsmodels", "parquet"},
        description=(
            "Did a release change behaviour? For each release, deployment and metric (each core action's "
            "share of active users and users, active users, and per group where group_metrics_weekly exists): "
            "the complete ISO weeks before the release week against those after it (4 and 4 by default, the "
            "release week skipped). Headline: the pooled difference with its Newcombe interval; verdict from a "
            "quasi-binomial (shares) or quasi-Poisson (counts) GLM of the weekly values with an academic-calendar "
            "term and, once a year of history exists, the same weeks a year earlier as control, after "
            "Benjamini-Hochberg across the release's metrics: up, down, no_change (with its interval), "
            "not_enough_data, confounded (another release inside the windows), too_early (after-window not over). "
            "One table, `metrics/release_impact/release_impact.parquet`, rewritten by each run; method and its "
            "measured false-alarm rate in docs/releases.md. Cannot see: changes smaller than about 10 points "
            "at ~120 active users a week; causes other than the release that coincide with it."
        ),
    )
    def release_impact_asset(
        context: AssetExecutionContext, metrics_storage: MetricsStorageResource
    ) -> MaterializeResult:
        storage = metrics_storage.get_storage()
        now = run_now(context)
        releases_table = read_releases(storage=storage)
        weekly = read_metrics("week", storage=storage)
        groups = load_group_weekly(storage)
        frame = release_impact(releases_table, weekly_series(weekly, groups), settings, now.date(), now)
        storage.write_frame(release_impact_key(), frame)
        verdicts = frame["verdict"].value_counts()
        shown = verdict_rows(frame)
        return MaterializeResult(
            metadata={
                "dagster/row_count": len(frame),
                "dagster/uri": MetadataValue.path(storage.uri(release_impact_key())),
                "releases_judged": int(frame[["release", "deployment"]].drop_duplicates().shape[0]),
                "groups_included": groups is not None,
                **{f"verdicts/{v}": int(verdicts.get(v, 0)) for v in ("up", "down", "no_change")},
                **{f"verdicts/{v}": int(verdicts.get(v, 0)) for v in ("not_enough_data", "confounded", "too_early")},
                "verdict_table": table(shown or [{"release": "-", "verdict": "no releases judged yet"}]),
            }
        )

    return [releases, release_impact_asset]
