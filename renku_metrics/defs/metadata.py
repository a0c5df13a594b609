"""Materialization metadata for runs that cover one partition or a range of them.

Dagster attaches the metadata of an asset's ``MaterializeResult`` to every
partition the run covers (it cannot attach per-partition metadata in a
single-run range: dagster-io/dagster issues 18123 and 21072). The aggregate and
engagement assets therefore backfill one period per run (``PER_PERIOD_BACKFILL``):
each run covers one partition and its result carries that period's own table and
numbers, which the asset's Plots tab draws across partitions.

A run that still covers a range (a CLI ``--partition-range``, or the raw-events
single-run backfills) records each partition's own numbers as an
``AssetObservation`` of that partition, and its result carries what is true of
the whole run (``run_*`` entries and a table with one row per partition).
"""

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetObservation,
    BackfillPolicy,
    MetadataValue,
    TableColumn,
    TableMetadataValue,
    TableRecord,
    TableSchema,
)

# One run per period: a period aggregates in well under a second, and the jobs use
# the in-process executor, so a run costs little more than its process start.
PER_PERIOD_BACKFILL = BackfillPolicy.multi_run(max_partitions_per_run=1)


def partition_metadata(
    context: AssetExecutionContext, key: AssetKey, per_partition: dict[str, dict], run_summary: dict
) -> dict:
    """The metadata for the run's MaterializeResult (logging observations in range runs)."""
    if len(per_partition) == 1:
        return next(iter(per_partition.values()))
    for partition, metadata in per_partition.items():
        context.log_event(AssetObservation(asset_key=key, partition=partition, metadata=metadata))
    return run_summary


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
