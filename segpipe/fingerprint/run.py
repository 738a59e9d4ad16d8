"""``segpipe fingerprint``: fingerprint every case in worker processes and write fingerprint.json."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from segpipe.dataset.model import CaseEntry, DatasetSpec
from segpipe.dataset.reading import read_case
from segpipe.dataset.store import load_dataset
from segpipe.fingerprint.aggregate import aggregate
from segpipe.fingerprint.case import fingerprint_case
from segpipe.io.jsonio import read_json, refuse_if_newer, write_json
from segpipe.locking import locked
from segpipe.parallel import map_cases
from segpipe.records import input_state, up_to_date, write_record
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)

MAX_INTENSITY_SAMPLES = 100_000_000  # foreground voxels per channel over the whole dataset (nnU-Net: 1e8)
SAMPLING_SEED = 1234


def _one(args: tuple[DatasetSpec, Path, CaseEntry, int, int]) -> dict:
    spec, raw, case, n_samples, seed = args
    data, label, geo = read_case(spec, raw, case)
    return fingerprint_case(data, label, geo, n_samples, seed)


@locked("fingerprint", exclusive=True)
def run_fingerprint(ws: Workspace, workers: int = 1, force: bool = False,
                    max_samples: int = MAX_INTENSITY_SAMPLES, seed: int = SAMPLING_SEED) -> tuple[dict, bool]:
    """Fingerprint ``ws``'s dataset. Returns (fingerprint, skipped)."""
    spec = load_dataset(ws)
    refuse_if_newer(ws.fingerprint_json, writing=True)  # before any work, --force or not
    settings = {"max_samples": max_samples, "seed": seed}
    raw_files = [ws.raw / f for c in spec.cases for f in c.images + ([c.label] if c.label else [])]
    inputs = input_state([ws.dataset_json], raw_files)
    if not force and up_to_date(ws, "fingerprint", inputs, settings, [ws.fingerprint_json]):
        log.info("fingerprint: inputs unchanged; skipping (use --force to redo)")
        return read_json(ws.fingerprint_json, kind="fingerprint"), True
    per_case = max(1, max_samples // max(1, len(spec.cases)))
    args = [(spec, ws.raw, c, per_case, seed + i) for i, c in enumerate(spec.cases)]
    results = map_cases(_one, args, workers, "fingerprint", cases=[c.id for c in spec.cases])
    cases: dict[str, dict] = {}
    samples: list[list[np.ndarray]] = [[] for _ in spec.channels]
    for c, r in zip(spec.cases, results):
        for k, s in enumerate(r.pop("samples")):
            samples[k].append(s)
        cases[c.id] = r
    fp = {"dataset": spec.name, "sampling": {"max_foreground_samples": max_samples, "per_case": per_case,
                                             "seed": seed, "replace": False},
          **aggregate(cases, samples, spec.channels)}
    if len(fp["orientations"]) > 1:
        log.warning("cases have different orientations %s; segpipe keeps each case's own geometry and "
                    "exports predictions in it", fp["orientations"])
    write_json(ws.fingerprint_json, fp, kind="fingerprint")
    write_record(ws, "fingerprint", inputs, settings, [ws.fingerprint_json])
    return fp, False
