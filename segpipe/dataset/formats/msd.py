"""Medical Segmentation Decathlon task folders.

``dataset.json`` with ``modality`` ({index: name}), ``labels`` ({value: name}) and ``training``
([{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]); multi-modal tasks store all channels
in one 4D file. Without a dataset.json, ``imagesTr``/``labelsTr`` with matching file names are used, and
labels come from ``--labels`` or from the label maps themselves.
"""
from __future__ import annotations

from pathlib import Path

from segpipe.dataset.formats.common import (
    OnboardOptions,
    channel_key_problems,
    channels_from,
    load_user_json,
    strip_ending,
    visible_files,
)
from segpipe.dataset.model import CaseEntry, DatasetSpec
from segpipe.errors import Problem
from segpipe.io.images import file_ending


def _rel(path_in_json: str) -> str:
    p = path_in_json.replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p


def discover_msd(source: Path, options: OnboardOptions) -> tuple[DatasetSpec, list[Problem]]:
    problems: list[Problem] = []
    dj_path = source / "dataset.json"
    declared_channels: dict[str, str] | None = None
    labels: dict[str, int] = dict(options.labels)
    cases: list[CaseEntry] = []
    if dj_path.is_file():
        dj, problems = load_user_json(dj_path, (("modality", dict), ("labels", dict), ("training", list)), "MSD")
        if not problems and not options.channels:
            problems = channel_key_problems(dj["modality"], "modality", dj_path)
        if problems:
            return _empty(source, options), problems
        declared_channels = {str(k): str(v) for k, v in dj["modality"].items()}
        if not labels:
            try:
                labels = {str(name): int(value) for value, name in dj["labels"].items()}
            except (TypeError, ValueError):
                problems.append(Problem("dataset.json 'labels' must map integer values to names, "
                                        f"found {dj['labels']!r}", 'write e.g. {"0": "background", "1": "tumour"}',
                                        str(dj_path)))
        for i, entry in enumerate(dj["training"]):
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
                problems.append(Problem(f"training entry {i} has no 'image' path: {entry!r}",
                                        "give each entry an 'image' and a 'label' path", str(dj_path)))
                continue
            img = _rel(entry["image"])
            lab = _rel(entry["label"]) if isinstance(entry.get("label"), str) else None
            cases.append(CaseEntry(strip_ending(Path(img).name), [img], lab))
    else:
        for img_file in visible_files(source / "imagesTr"):
            if not file_ending(img_file.name):
                continue
            lab_file = source / "labelsTr" / img_file.name
            cases.append(CaseEntry(strip_ending(img_file.name), [f"imagesTr/{img_file.name}"],
                                   f"labelsTr/{img_file.name}" if lab_file.exists() else None))
        image_ids = {c.id for c in cases}
        for lab_file in visible_files(source / "labelsTr"):
            if file_ending(lab_file.name) and strip_ending(lab_file.name) not in image_ids:
                problems.append(Problem("label file without an image", "add the image to imagesTr or remove the "
                                        "label", str(lab_file), strip_ending(lab_file.name)))
    channels = channels_from(options, declared_channels)
    ending = file_ending(cases[0].images[0]) if cases else ".nii.gz"
    spec = DatasetSpec(name=options.name, source=str(source), format="msd", channels=channels, labels=dict(labels),
                       file_ending=ending, cases=cases, channels_in_file=True)
    return spec, problems


def _empty(source: Path, options: OnboardOptions) -> DatasetSpec:
    return DatasetSpec(options.name, str(source), "msd", {}, {}, ".nii.gz", [])
