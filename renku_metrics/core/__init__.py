"""The plain-Python core: events, storage layout, manifests, periods, config, catalog,
extraction, aggregation, engagement views, readers and sources. Never imports Dagster."""
