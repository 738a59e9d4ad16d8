"""Model packages: ``segpipe export-model`` writes a trained model as one zip, ``segpipe import-model``
installs it into a workspace, where ``segpipe predict`` uses it as if it had been trained there.

The zip holds ``manifest.json`` (format version, segpipe version, data set, configurations and folds, the
sha256 and size of every other member), ``dataset.json`` (channels, labels and file ending; no case list: no
file names of the training data leave the workspace), ``plans.json``, ``selection.json`` when the data set has
one, and per configuration and fold ``results/<config>/fold_<k>/checkpoint_final.pt`` with the fold's
``trained_with.json`` (the plan entry it was trained with, which predict checks). Nothing is pickled:
checkpoints load with ``weights_only=True``.

Import verifies every checksum before writing anything, refuses a package whose data set exists in the
workspace with other channels or labels, or whose plans differ from the workspace's (it never replaces a
trained model there), and writes each file atomically.
"""
from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path
from typing import Any

from segpipe._version import __version__
from segpipe.dataset.model import case_id_problem
from segpipe.dataset.store import load_dataset
from segpipe.errors import fail
from segpipe.inference.models import _check_folds_plan, chosen_models, trained_folds
from segpipe.io.atomic import atomic_path, atomic_write_bytes, verify_zip
from segpipe.io.jsonio import read_json
from segpipe.locking import locked
from segpipe.planning.plans import load_plans
from segpipe.workspace import Workspace

PACKAGE_VERSION = 1
MANIFEST = "manifest.json"
CHECKPOINT = "checkpoint_final.pt"
ORIGIN = "trained_with.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _portable_dataset(ws: Workspace) -> dict[str, Any]:
    spec = load_dataset(ws)  # validated
    d = read_json(ws.dataset_json)
    d.update({"cases": [], "num_cases": 0, "source": f"imported model '{spec.name}'",
              "notes": [*spec.notes, "installed by segpipe import-model: no training cases"]})
    return d


def export_model(ws: Workspace, out: Path, configs: list[str] | None = None, folds: list[str] | None = None,
                 best: bool = False, force: bool = False) -> dict[str, Any]:
    """Write the model of ``ws`` (``configs``/``folds``, default the plan's default configuration and every
    trained fold; ``best``: select's choice) to the zip ``out``; returns the manifest."""
    out = Path(out)
    if out.exists() and not force:
        raise fail("the package file exists", "choose another file name, or --force to replace it", file=out)
    names, fs, _ = chosen_models(ws, configs, folds, best)
    members: dict[str, Path | bytes] = {
        "dataset.json": json.dumps(_portable_dataset(ws), indent=1).encode(), "plans.json": ws.plans_json}
    if best:  # select's choice travels only with the models it names
        members["selection.json"] = ws.selection_json
    plans = load_plans(ws)
    wanted: list[tuple[str, list[str] | None]] = [(c, fs) for c in names]
    for c in names:  # a cascade stage needs its previous stage: every trained fold of it, as predict uses them
        previous = plans.configuration(c).previous_stage
        if previous is not None and previous not in names:
            wanted.append((previous, None))
    chosen: dict[str, list[str]] = {}
    for c, given in wanted:
        cfs = [str(f) for f in given] if given else trained_folds(ws, c)
        if not cfs:
            raise fail(f"no trained fold of {c} to export", f"train it first: `segpipe train --config {c} --fold 0`",
                       file=ws.results_root(c))
        _check_folds_plan(ws, c, plans.configuration(c), cfs)  # a fold of an older plan would fail at predict
        for f in cfs:
            fold = ws.results(c, f)
            for name in (CHECKPOINT, ORIGIN):
                if not (fold / name).is_file():
                    raise fail(f"fold {f} of {c} lacks {name}", f"train the fold to the end: `segpipe train "
                               f"--config {c} --fold {f}`", file=fold / name)
                members[f"results/{c}/fold_{f}/{name}"] = fold / name
        chosen[c] = cfs
    files: dict[str, dict[str, Any]] = {}
    with atomic_path(out, verify=verify_zip) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for arc, src in members.items():
            data = src if isinstance(src, bytes) else Path(src).read_bytes()
            zf.writestr(arc, data)
            files[arc] = {"sha256": _sha256(data), "bytes": len(data)}
        manifest = {"kind": "segpipe_model", "package_version": PACKAGE_VERSION, "segpipe_version": __version__,
                    "dataset": ws.dataset, "configurations": chosen, "files": files}
        zf.writestr(MANIFEST, json.dumps(manifest, indent=1))
    return manifest


_MEMBER = re.compile(r"^(dataset\.json|plans\.json|selection\.json|results/[A-Za-z0-9][A-Za-z0-9._+-]*/"
                     r"fold_[A-Za-z0-9]+/(checkpoint_final\.pt|trained_with\.json))$")


def _allowed_member(name: str) -> bool:
    """Only the files export_model writes, by name: no absolute paths, no ``..``, nothing else (a package can
    never write outside its data set's folder)."""
    return bool(_MEMBER.match(name)) and ".." not in name.split("/")


def read_package(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and every member of a package, checksums verified (an error names the member)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
    except (zipfile.BadZipFile, OSError) as e:
        raise fail(f"not a readable zip ({e})", "give a file written by `segpipe export-model`", file=path) from None
    if MANIFEST not in members:
        raise fail("no manifest.json: not a segpipe model package", "export it with `segpipe export-model`",
                   file=path)
    manifest = json.loads(members.pop(MANIFEST))
    if manifest.get("kind") != "segpipe_model" or manifest.get("package_version") != PACKAGE_VERSION:
        raise fail(f"unsupported package (kind {manifest.get('kind')!r}, version {manifest.get('package_version')})",
                   f"export it again with this segpipe ({__version__})", file=path)
    listed = manifest.get("files", {})
    for name in sorted(set(listed) | set(members)):
        if not _allowed_member(name):
            raise fail(f"member {name!r} is not one a segpipe model package holds",
                       "the package was not written by `segpipe export-model` (or was altered): nothing installed",
                       file=path)
    for name in sorted(set(listed) | set(members)):
        if name not in members or name not in listed:
            raise fail(f"member {name} is {'missing' if name not in members else 'not in the manifest'}",
                       "the package is damaged or was changed: export it again", file=path)
        if _sha256(members[name]) != listed[name]["sha256"]:
            raise fail(f"checksum of {name} does not match the manifest", "the package is damaged or was changed: "
                       "export it again", file=path)
    return manifest, members


def import_model(path: Path, root: Path, name: str | None = None, force: bool = False) -> Workspace:
    """Install the package at ``path`` into the workspace ``root`` as data set ``name`` (default: the package's);
    returns its workspace. Refuses a data set there with other channels or labels, or other plans, and trained
    folds it would replace (unless ``force``)."""
    manifest, members = read_package(path)
    dataset = name or str(manifest.get("dataset", ""))
    why = case_id_problem(dataset)
    if why:
        raise fail(f"unsafe data set name {dataset!r}: {why.replace('case id', 'name')}",
                   "give a name of letters, digits, '_', '-' with --name", file=path)
    ws = Workspace(root, dataset)
    _install(ws, members, force)
    return ws


@locked("import-model", exclusive=True)
def _install(ws: Workspace, members: dict[str, bytes], force: bool) -> None:
    """Write the package's ``members`` into ``ws`` holding the data set's lock (no stage runs meanwhile)."""
    dataset, plans = json.loads(members["dataset.json"]), json.loads(members["plans.json"])
    if ws.dataset_json.is_file():
        have = read_json(ws.dataset_json)
        for key in ("channels", "labels"):
            if have.get(key) != dataset.get(key):
                raise fail(f"data set '{ws.dataset}' exists here with other {key} ({have.get(key)} vs the package's "
                           f"{dataset.get(key)})", "import under another --name, or into another workspace",
                           file=ws.dataset_json)
    if ws.plans_json.is_file() and read_json(ws.plans_json).get("configurations") != plans.get("configurations"):
        raise fail(f"data set '{ws.dataset}' has other plans than the package's",
                   "import under another --name, or into another workspace", file=ws.plans_json)
    existing = [m for m in members if m.startswith("results/") and (ws.dir / m).exists()]
    if existing and not force:
        raise fail(f"{len(existing)} file(s) of the package exist in the workspace (e.g. {existing[0]})",
                   "import under another --name, or --force to replace them", file=ws.dir / existing[0])
    for arc, data in sorted(members.items()):
        target = ws.dir / arc
        if arc in ("dataset.json", "plans.json") and target.is_file():
            continue  # checked equal above (channels, labels, configurations)
        if arc in ("dataset.json", "plans.json"):  # the data set's name inside them is the one it is installed as
            doc = json.loads(data)
            doc["name" if arc == "dataset.json" else "dataset"] = ws.dataset
            data = json.dumps(doc, indent=1).encode()
        if arc.endswith(".pt"):
            with atomic_path(target, verify=verify_zip) as tmp:
                tmp.write_bytes(data)
        else:
            atomic_write_bytes(target, data)
