"""The in-tree trainers: importing this module registers them all (``default`` and ``noaug`` in
:mod:`segpipe.training.trainer`, ``bcp`` in :mod:`segpipe.training.bcp`). Plug-ins register theirs through the
``segpipe.plugins`` entry points (:mod:`segpipe.plugins`)."""
from segpipe.training import bcp, trainer

__all__ = ["bcp", "trainer"]
