"""Evaluation: metrics per case and class, summaries, postprocessing and configuration selection."""
