"""The batches/s rule shared by loading_segpipe.py and loading_nnunet.py (standard library only: it is imported
from segpipe's venv and from nnU-Net's).

A loader with background workers keeps finished batches in a queue (segpipe's DataLoader: ``prefetch_factor`` x
workers; nnU-Net's NonDetMultiThreadedAugmenter: ``num_cached`` = 6), so a consumer that paused (nnU-Net's
``get_dataloaders`` takes a validation batch after the first training batch) finds batches ready and would
measure the queue instead of the workers. The rule, the same for both tools:

1. warm-up: the first ``max(1, workers)`` batches (the workers start together);
2. drain: further batches that were already waiting (``next()`` returned in under ``READY_S``), at most
   ``MAX_DRAIN``; then ``settle`` more batches, untimed: a large batch takes tens of ms to arrive through the
   queue even when it was ready, so step 2 alone can stop early. ``SETTLE`` = 16 is more than either queue can
   hold: nnU-Net's ``2 x num_cached + 1 + workers`` = 15 with 2 workers (its multiprocessing queue, its results
   thread's queue and the item in that thread, one finished item per blocked worker), segpipe's
   ``prefetch_factor x workers`` = 4;
3. timed: the arrival of the last untimed batch starts the clock; ``batches`` further batches are taken and the
   rate is ``batches / (t_last - t_start)``. From the end of step 1 on the consumer never pauses, so whatever
   had queued up is used up in steps 2 and 3 and the rate is the workers' production rate. ``second_half_rate``
   (the rate over the second half of the timed batches) is a check: it differs much from the rate only when
   queued batches were still counted.
"""
from __future__ import annotations

import time
from collections.abc import Callable

READY_S = 0.005
MAX_DRAIN = 32
SETTLE = 16


def take_batches(next_batch: Callable[[], object], workers: int, batches: int, settle: int = SETTLE,
                 taken: list[float] | None = None, on_batch: Callable[[object], None] | None = None) -> dict:
    """Take batches by the rule above. ``taken``: arrival times of batches the caller already took (they count
    toward the warm-up). Returns the arrival times and the rate."""
    arrivals = list(taken or [])
    waits: list[float | None] = [None] * len(arrivals)

    def take() -> float:
        t = time.monotonic()
        b = next_batch()
        now = time.monotonic()
        arrivals.append(now)
        waits.append(now - t)
        if on_batch is not None:
            on_batch(b)
        return now - t

    warm = max(1, workers)
    while len(arrivals) < warm:
        take()
    drained = 0
    while drained < MAX_DRAIN:
        if take() >= READY_S:
            break
        drained += 1
    for _ in range(settle):
        take()
    start = len(arrivals) - 1
    for _ in range(batches):
        take()
    span = arrivals[-1] - arrivals[start]
    half = batches // 2
    span2 = arrivals[-1] - arrivals[-1 - half] if half else 0.0
    return {"arrivals": arrivals, "waits_s": waits, "warmup_batches": warm, "drained_batches": drained,
            "settle_batches": settle, "timed_from_index": start, "batches_timed": batches, "timed_span_s": span,
            "batches_per_s": batches / span if span > 0 else None,
            "second_half_rate": half / span2 if span2 > 0 else None}
