"""The error types every layer raises and catches: one place, no Dagster."""


class ConfigError(ValueError):
    """A configuration file or setting is wrong; the message names file, deployment and key."""
