"""Check helpers shared by the aggregate and engagement assets (plain pandas)."""

import pandas as pd

from renku_metrics.core.config import MetricsConfig
from renku_metrics.core.events import ALL_DEPLOYMENTS


def missing_deployments(frame: pd.DataFrame, config: MetricsConfig) -> list[str]:
    """``"<period_start>: <deployment>"`` for each deployment (or ``all``) that should
    have a row in a period of ``frame`` but has none. A deployment is expected in
    every period that ends after its start_date."""
    missing = []
    for period_start, rows in frame.groupby("period_start"):
        end = rows["period_end"].iloc[0]
        expected = {d.name for d in config.deployments if d.start_date < end} | {ALL_DEPLOYMENTS}
        missing += [f"{period_start}: {name}" for name in sorted(expected - set(rows["deployment"]))]
    return missing


def duplicate_rows(frame: pd.DataFrame, key_columns: list[str]) -> int:
    """Rows whose key appears more than once."""
    return int(frame.duplicated(subset=key_columns, keep=False).sum())
