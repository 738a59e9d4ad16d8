"""Preprocessing: crop to nonzero, normalize, resample, and write per-case arrays."""
