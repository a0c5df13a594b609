"""Dagster resource for the metrics storage root."""

from __future__ import annotations

from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource

from renku_metrics.core.storage import Storage, StorageError, open_storage


class MetricsStorageResource(ConfigurableResource):
    """Where raw events and aggregates are written.

    ``root`` is a local directory or ``s3://bucket/prefix``; when empty, it is
    read at run time from $RENKU_METRICS_STORAGE, falling back to ``./data``.
    S3 goes through dagster-aws' S3Resource: credentials from the standard AWS
    variables or files; ``endpoint_url`` (or $AWS_ENDPOINT_URL) for
    S3-compatible stores such as MinIO or Ceph.
    """

    root: str = ""
    endpoint_url: str | None = None
    region_name: str | None = None

    def get_storage(self) -> Storage:
        import os

        root = self.root or os.environ.get("RENKU_METRICS_STORAGE") or "./data"
        if root.startswith("s3://"):
            endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
            try:
                client = S3Resource(endpoint_url=endpoint, region_name=self.region_name).get_client()
            except Exception as exc:
                raise StorageError(f"cannot create an S3 client for {root}: {exc}") from exc
            return open_storage(root, client=client)
        return open_storage(root)
