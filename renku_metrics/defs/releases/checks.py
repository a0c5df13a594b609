"""Checks of the release verdicts (plain pandas over the stored table)."""

import pandas as pd
from dagster import AssetCheckResult, AssetChecksDefinition, MetadataValue, asset_check

from renku_metrics.core.layout import release_impact_key
from renku_metrics.core.value.impact import VERDICTS
from renku_metrics.defs.releases.assets import RELEASE_IMPACT
from renku_metrics.defs.resources import MetricsStorageResource

KEY = ["release", "deployment", "metric", "measure", "group"]


def verdict_problems(frame: pd.DataFrame) -> list[str]:
    """What is wrong with a release_impact table: duplicate keys, unknown verdicts, a
    judged row (up/down/no_change) without its interval, a confounded row without a name."""
    problems = []
    duplicated = frame[frame.duplicated(KEY, keep=False)]
    if not duplicated.empty:
        problems.append(f"{len(duplicated)} rows share a (release, deployment, metric, measure, group)")
    unknown = sorted(set(frame["verdict"]) - set(VERDICTS))
    if unknown:
        problems.append(f"unknown verdicts: {', '.join(map(str, unknown))}")
    judged = frame[frame["verdict"].isin(["up", "down", "no_change"])]
    if judged[["model_low", "model_high", "p_adjusted"]].isna().any(axis=None):
        problems.append("a judged row lacks its model interval or adjusted p-value")
    if frame.loc[frame["verdict"] == "confounded", "confounded_by"].isna().any():
        problems.append("a confounded row does not name the other release")
    return problems


def build_release_checks() -> list[AssetChecksDefinition]:
    @asset_check(
        asset=RELEASE_IMPACT,
        name="verdicts_well_formed",
        description="One row per release, deployment, metric, measure and group; every verdict one of "
        f"{', '.join(VERDICTS)}; every up/down/no_change with its model interval; every confounded row "
        "naming the other release.",
    )
    def verdicts_well_formed(metrics_storage: MetricsStorageResource) -> AssetCheckResult:
        storage = metrics_storage.get_storage()
        frame = storage.read_parquet(release_impact_key()).to_pandas()
        problems = verdict_problems(frame)
        return AssetCheckResult(
            passed=not problems,
            metadata={
                "rows": len(frame),
                "problems": MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
            },
        )

    return [verdicts_well_formed]
