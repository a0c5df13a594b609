"""The code location's entry point: ``renku_metrics.definitions:defs``.

Everything Dagster lives in ``renku_metrics.defs``; the plain-Python core it
orchestrates is ``renku_metrics.core`` (see docs/architecture.md).
"""

from renku_metrics.defs.build import build_defs

defs = build_defs()

__all__ = ["build_defs", "defs"]
