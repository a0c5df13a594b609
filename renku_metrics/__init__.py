"""renku-metrics: Renku product metrics as a Dagster code location.

Notebook API (no Dagster needed)::

    from renku_metrics import read_metrics, read_active_users, read_events
    from renku_metrics import read_lifecycle, read_stickiness, read_retention
"""

from renku_metrics.core.readers import (
    read_active_users,
    read_events,
    read_lifecycle,
    read_metrics,
    read_retention,
    read_stickiness,
)

__all__ = ["read_metrics", "read_active_users", "read_events", "read_lifecycle", "read_stickiness", "read_retention"]

# Activation of new users (docs/engagement.md): from renku_metrics import read_activation
from renku_metrics.core.readers import read_activation  # noqa: E402

__all__ += ["read_activation"]
