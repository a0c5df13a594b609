"""The clock of a run: when "now" is for the period a run computes.

Aggregates and engagement views ask whether a period has ended (``complete``)
at the run's clock. It is the wall clock, unless the run carries the tag
``renku_metrics/now`` with an ISO 8601 time: a run "as of" a given moment
(tests, or recomputing what a past scheduled run saw).
"""

from __future__ import annotations

import datetime as dt

from dagster import AssetExecutionContext

NOW_TAG = "renku_metrics/now"


def run_now(context: AssetExecutionContext) -> dt.datetime:
    """The run's ``now`` (UTC): the ``renku_metrics/now`` run tag if set, else the wall clock."""
    value = context.run.tags.get(NOW_TAG)
    if not value:
        return dt.datetime.now(dt.timezone.utc)
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"run tag {NOW_TAG}: expected an ISO 8601 time like 2025-03-10T04:00:00Z, got {value!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)
