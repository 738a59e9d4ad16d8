"""Inference: sliding-window prediction with Gaussian importance weighting and test-time mirroring
(:mod:`segpipe.inference.sliding_window`), and export of softmax probabilities back into the raw image's
geometry — resampled to the original spacing, un-cropped, written as a label map and optionally as
probabilities (:mod:`segpipe.inference.export`)."""
