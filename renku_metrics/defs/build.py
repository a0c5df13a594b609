"""Assembles the code location's ``Definitions`` from configuration.

Which deployments exist is configuration (deployments.yaml, or the file named by
$RENKU_METRICS_DEPLOYMENTS); ``build_defs`` builds the per-deployment assets from it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from dagster import Definitions, in_process_executor

from renku_metrics.core.catalog import Catalog, load_catalog
from renku_metrics.core.config import MetricsConfig, load_config
from renku_metrics.core.value.digest_config import load_digest_config
from renku_metrics.core.value.targets import load_targets
from renku_metrics.defs.aggregates.assets import build_metric_assets
from renku_metrics.defs.aggregates.checks import period_freshness_rules
from renku_metrics.defs.aggregates.schedules import build_period_job_and_schedule
from renku_metrics.defs.digest.assets import build_digest_asset
from renku_metrics.defs.digest.schedules import build_digest_job_and_schedule
from renku_metrics.defs.engagement.assets import build_engagement_assets
from renku_metrics.defs.freshness import build_freshness_checks, build_freshness_sensor
from renku_metrics.defs.groups.assets import build_group_assets
from renku_metrics.defs.integrity.schedules import verify_store_job, verify_store_schedule
from renku_metrics.defs.raw_events.assets import build_raw_events_asset
from renku_metrics.defs.raw_events.checks import raw_events_freshness_rules
from renku_metrics.defs.raw_events.schedules import build_daily_extract_schedule
from renku_metrics.defs.releases.assets import build_release_assets
from renku_metrics.defs.releases.checks import build_release_checks
from renku_metrics.defs.releases.schedules import build_releases_job_and_schedule
from renku_metrics.defs.report.assets import build_report_asset, build_report_job_and_sensor
from renku_metrics.defs.resources import metrics_storage_resource
from renku_metrics.defs.targets.assets import build_target_status_asset, upstream_keys
from renku_metrics.defs.targets.schedules import build_target_status_job_and_sensor


def build_defs(
    config: MetricsConfig | None = None,
    catalog: Catalog | None = None,
    storage_root: str = "",
    env: Mapping[str, str] | None = None,
) -> Definitions:
    env = os.environ if env is None else env
    config = config or load_config(env=env)
    catalog = catalog or load_catalog()
    raw_assets, jobs, schedules = [], [], []
    for deployment in config.deployments:
        asset_def = build_raw_events_asset(deployment)
        job, schedule = build_daily_extract_schedule(deployment, asset_def)
        raw_assets.append(asset_def)
        jobs.append(job)
        schedules.append(schedule)
    weekly = build_metric_assets(config, catalog, "week")
    monthly = build_metric_assets(config, catalog, "month")
    engagement = build_engagement_assets(config)
    group_assets = build_group_assets(config, catalog)
    for period, assets in (("week", weekly), ("month", monthly)):
        job, schedule = build_period_job_and_schedule(
            config, period, [*assets, *engagement[period], *group_assets[period]]
        )
        jobs.append(job)
        schedules.append(schedule)
    report = build_report_asset()
    report_job, report_sensor = build_report_job_and_sensor(report)
    jobs.append(report_job)
    digest = build_digest_asset(config, load_digest_config(env=env))
    digest_job, digest_schedule = build_digest_job_and_schedule(digest)
    jobs.append(digest_job)
    schedules.append(digest_schedule)
    freshness = {
        **raw_events_freshness_rules(config.deployments),
        **period_freshness_rules(
            "week", config.earliest_start, [k for a in [*weekly, *engagement["week"]] for k in a.keys]
        ),
        **period_freshness_rules(
            "month", config.earliest_start, [k for a in [*monthly, *engagement["month"]] for k in a.keys]
        ),
    }
    release_assets = build_release_assets(config)
    releases_job, releases_schedule = build_releases_job_and_schedule(release_assets)
    jobs.append(releases_job)
    schedules.append(releases_schedule)
    all_assets = [
        *raw_assets,
        *weekly,
        *monthly,
        *engagement["week"],
        *engagement["month"],
        report,
        *group_assets["week"],
        *group_assets["month"],
        digest,
        *release_assets,
    ]
    # Targets ($RENKU_METRICS_TARGETS or core/targets.yaml), their metrics checked against the catalog
    # (a target on a deployment not configured here shows no_data, saying so). target_status depends
    # on the tables its targets read, among the assets defined here.
    targets = load_targets(metrics=[m.id for m in catalog.computed()], env=env)
    defined = {k for a in all_assets for k in a.keys}
    target_upstream = [k for k in upstream_keys(targets) if k in defined]
    target_status = build_target_status_asset(config, targets, target_upstream)
    target_job, target_sensor = build_target_status_job_and_sensor(target_status, target_upstream)
    jobs.append(target_job)
    # The store scan on a schedule (defs/integrity).
    jobs.append(verify_store_job)
    schedules.append(verify_store_schedule)
    return Definitions(
        assets=[*all_assets, target_status],
        asset_checks=[build_freshness_checks(freshness), *build_release_checks()],
        jobs=jobs,
        schedules=schedules,
        sensors=[build_freshness_sensor(freshness), report_sensor, target_sensor],
        resources={"metrics_storage": metrics_storage_resource(storage_root)},
        # Every run executes its steps in the run's own process: a backfill runs one period
        # per run, and a subprocess per step would multiply each run's start-up cost.
        executor=in_process_executor,
    )
