"""Materialization metadata: every partition its own numbers, also in a run over a range.

A run may cover one partition or a range of them (a backfill launches a range
per run, the CLI a ``--partition-range``). Metadata returned on the asset's
``MaterializeResult`` would be copied to every partition of the range (the
limitation of dagster-io/dagster issues 18123 and 21072), so the assets return
none there: each partition's own figures are attached to that partition's
materialization event with ``context.add_asset_metadata(..., partition_key=...)``
(``own_metadata``), where the asset overview's Metadata → Plots view and the partition view read them.

A backfill launches a quarter of periods per run (``period_backfill_policy``): 13
weeks or 3 months. The run's cost is then mostly the periods' own work (one
DuckDB scan for all of them), not a process start and code load per period.
"""

from dagster import (
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    MetadataValue,
    TableColumn,
    TableMetadataValue,
    TableRecord,
    TableSchema,
)

# Periods per backfill run: a quarter. A three-year backfill through the UI is 12 weekly
# and 12 monthly runs, not 192; each partition still gets its own metadata (own_metadata).
PERIODS_PER_BACKFILL_RUN = {"week": 13, "month": 3}


def period_backfill_policy(period: str) -> BackfillPolicy:
    """The backfill policy of the assets partitioned by ``period`` ("week" or "month")."""
    return BackfillPolicy.multi_run(max_partitions_per_run=PERIODS_PER_BACKFILL_RUN[period])


def own_metadata(context: AssetExecutionContext, key: AssetKey, per_partition: dict[str, dict]) -> None:
    """Attach each partition's own metadata to that partition's materialization in this run.

    ``per_partition`` maps every partition key the run materializes for ``key`` to its
    metadata; the run's ``MaterializeResult`` for ``key`` must then carry no metadata
    (Dagster would add it to every partition).
    """
    covered = set(context.partition_keys)
    unknown = sorted(set(per_partition) - covered)
    if unknown:
        raise ValueError(f"{key.to_user_string()}: metadata for partitions outside the run: {unknown}")
    for partition, metadata in per_partition.items():
        context.add_asset_metadata(metadata, asset_key=key, partition_key=partition)


def _column_type(values: list) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float"
    return "string"


def table(rows: list[dict]) -> TableMetadataValue:
    """Rows as table metadata, which the UI always renders inline (markdown over 1,000
    characters becomes a "[Show Markdown]" link). Values: str, int, float, bool or None."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    schema = TableSchema(columns=[TableColumn(name, _column_type([row.get(name) for row in rows])) for name in columns])
    return MetadataValue.table(records=[TableRecord({c: row.get(c) for c in columns}) for row in rows], schema=schema)


def _cell(text: str):
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else text


def markdown_table(markdown: str) -> TableMetadataValue:
    """A markdown table (header, separator, rows; as the assets render them) as table
    metadata, so the UI shows it inline however long it is."""
    lines = [line.strip() for line in markdown.strip().splitlines() if line.strip().startswith("|")]
    if not lines:
        return table([])
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [_cell(c) for c in line.strip("|").split("|")]
        rows.append(dict(zip(header, cells, strict=False)))
    return table(rows)


def table_rows(value: TableMetadataValue) -> list[dict]:
    """The records of table metadata as dicts (for tests and readers of the metadata)."""
    return [dict(r.data) for r in value.records]
