"""Test-time adaptation of trained models to unlabelled images of a new domain (``segpipe adapt``):
:mod:`segpipe.adaptation.tent` (entropy minimisation on the normalization layers' affine parameters) and
:mod:`segpipe.adaptation.run` (the stage: read the target images, adapt each fold, write a new model workspace)."""
