"""Datasets: the workspace's dataset.json schema, reading cases, validation and onboarding converters."""
