"""Delivery of messages: chat webhooks and e-mail (plain Python, no Dagster, no metrics)."""
