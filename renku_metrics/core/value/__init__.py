"""The value loop: groups, targets, release impact and the weekly digest (plain Python)."""
