"""``segpipe demo`` / ``make demo``: run the stages on the example data shipped inside the package."""
from __future__ import annotations

import logging
from pathlib import Path

from segpipe.dataset.formats.common import OnboardOptions
from segpipe.dataset.onboard import onboard
from segpipe.fingerprint.run import run_fingerprint
from segpipe.planning.run import run_plan, summarize

log = logging.getLogger(__name__)

EXAMPLE = Path(__file__).parent / "data" / "example" / "hippocampus"


def run_demo(workspace: Path, workers: int = 1, force: bool = False) -> int:
    """Onboard, fingerprint and plan the packaged hippocampus example; print the plan summary."""
    ws, spec, _, _ = onboard(EXAMPLE, workspace, OnboardOptions(name="hippocampus_example"), workers=workers,
                             force=force)
    log.info("onboarded %d cases from %s", len(spec.cases), EXAMPLE)
    run_fingerprint(ws, workers=workers, force=force)
    plans, _ = run_plan(ws, force=force)
    print(summarize(plans, explain=True))
    return 0
