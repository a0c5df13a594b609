"""Source registry: YAML source type -> module defining ``Settings`` and ``Source``."""

from __future__ import annotations

import importlib
from types import ModuleType

SOURCE_MODULES = {
    "demo": "renku_metrics.core.sources.demo",
    "keycloak": "renku_metrics.core.sources.keycloak",
    "gitlab": "renku_metrics.core.sources.gitlab",
    "amalthea_audit_log": "renku_metrics.core.sources.amalthea",
    "data_services": "renku_metrics.core.sources.data_services",
}


def source_module(source_type: str) -> ModuleType:
    """The module implementing a source type (imported lazily)."""
    return importlib.import_module(SOURCE_MODULES[source_type])
