"""The Dagster layer: assets, checks, jobs, schedules, sensors and resources, by domain."""
