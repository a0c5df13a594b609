"""The code location's entry point: ``renku_metrics.definitions:defs``.

Everything Dagster lives in ``renku_metrics.defs``; the plain-Python core it
orchestrates is ``renku_metrics.core`` (see docs/architecture.md).
"""

import warnings

from dagster import BetaWarning

from renku_metrics.defs.build import build_defs

# Two parameters the code location relies on are marked beta in Dagster 1.13
# (single-run backfills of the raw events; weekly and monthly assets reading days
# before a deployment's start). They are used as documented: their warnings would
# be printed once per asset at every load. Any other warning still shows.
with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore",
        message=r"Parameter `(backfill_policy|allow_nonexistent_upstream_partitions)` ",
        category=BetaWarning,
    )
    defs = build_defs()

__all__ = ["build_defs", "defs"]
