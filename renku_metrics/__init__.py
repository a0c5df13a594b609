"""renku-metrics: Renku product metrics as a Dagster code location.

Notebook API (no Dagster needed)::

    from renku_metrics import read_metrics, read_active_users, read_events
    from renku_metrics import read_lifecycle, read_stickiness, read_retention
    from renku_metrics import read_group_metrics, read_target_status
    from renku_metrics import read_releases, read_release_impact, read_activation
"""

from renku_metrics.core.readers import (
    read_activation,
    read_active_users,
    read_events,
    read_group_metrics,
    read_lifecycle,
    read_metrics,
    read_release_impact,
    read_releases,
    read_retention,
    read_stickiness,
    read_target_status,
)

__all__ = [
    "read_metrics",
    "read_active_users",
    "read_events",
    "read_lifecycle",
    "read_stickiness",
    "read_retention",
    "read_group_metrics",
    "read_target_status",
    "read_releases",
    "read_release_impact",
    "read_activation",
]
