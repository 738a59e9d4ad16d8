"""Fingerprint: per-case geometry and foreground intensity statistics, aggregated over the dataset."""
