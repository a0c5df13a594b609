"""Targets followed to their date: the target_status asset, a check per target, its job and sensor."""
