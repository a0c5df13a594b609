"""Dagster resource for the metrics storage root."""

from __future__ import annotations

import os

from dagster import ConfigurableResource, EnvVar
from dagster_aws.s3 import S3Resource
from pydantic import Field

from renku_metrics.core.storage import (
    DEFAULT_ROOT,
    STORAGE_ENV,
    Storage,
    StorageError,
    endpoint_without_credentials,
    open_storage,
)

ENDPOINT_ENV = "AWS_ENDPOINT_URL"


class MetricsStorageResource(ConfigurableResource):
    """Where raw events and aggregates are written.

    ``root`` is a local directory or ``s3://bucket/prefix``. An S3 root is read
    and written with the client of dagster-aws' ``S3Resource``: credentials from
    the standard AWS variables or files, ``endpoint_url`` for S3-compatible
    stores such as MinIO or Ceph. ``metrics_storage_resource()`` configures the
    fields from the environment the Dagster way.
    """

    # (The S3 settings are fields rather than a nested S3Resource: Dagster 1.13
    # warns about its own deprecated call every time a nested resource starts.)
    root: str = Field(default=DEFAULT_ROOT, description="A local directory or s3://bucket/prefix.")
    endpoint_url: str | None = Field(default=None, description="S3 endpoint; unset for AWS S3.")
    region_name: str | None = Field(default=None, description="S3 region; unset for the AWS default.")

    def get_storage(self) -> Storage:
        if not self.root:
            raise StorageError("storage root is empty (set $RENKU_METRICS_STORAGE, or leave it unset for ./data)")
        if self.root.startswith("s3://"):
            if self.endpoint_url:  # refused before a client holds it (and might log it)
                endpoint_without_credentials(self.endpoint_url)
            try:
                client = S3Resource(endpoint_url=self.endpoint_url, region_name=self.region_name).get_client()
            except Exception as exc:
                raise StorageError(f"cannot create an S3 client for {self.root}: {exc}") from exc
            return open_storage(self.root, client=client, endpoint_url=self.endpoint_url)
        return open_storage(self.root)


def metrics_storage_resource(root: str = "") -> MetricsStorageResource:
    """The storage resource of the code location.

    Without ``root``: $RENKU_METRICS_STORAGE when it is set, else ``./data``; and
    $AWS_ENDPOINT_URL, when set, as the S3 endpoint. Both stay ``EnvVar``s that
    Dagster reads when a run or a tick uses the resource (the UI shows the
    variable, not its value); here only whether they are set is looked at.
    """
    if not root:
        root = EnvVar(STORAGE_ENV) if os.environ.get(STORAGE_ENV) else DEFAULT_ROOT
    endpoint = EnvVar(ENDPOINT_ENV) if os.environ.get(ENDPOINT_ENV) else None
    return MetricsStorageResource(root=root, endpoint_url=endpoint)
