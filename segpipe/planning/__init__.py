"""Planning: derive target spacing, patch size, topology, batch size, normalization and resampling per
configuration from a dataset's fingerprint. Every constant lives in :mod:`segpipe.planning.constants`."""
