"""nnU-Net v2 raw folders: dataset.json with ``channel_names``, ``labels`` ({name: value}), ``file_ending``;
``imagesTr/<case>_<XXXX><ending>`` (one file per channel) and ``labelsTr/<case><ending>``.

Unlabelled images (segpipe's addition, for semi-supervised trainers): ``imagesUnlabelled/<case>_<XXXX><ending>``
when that folder exists, or the folder named by dataset.json's ``"unlabelled": {"folder": "..."}``; and, with
``"unlabelled": {"images_without_labels": true}``, the images of ``imagesTr`` that have no label file (without
that declaration such an image is an error, since a forgotten label is the likelier cause).
"""
from __future__ import annotations

import re
from pathlib import Path

from segpipe.dataset.formats.common import (
    OnboardOptions,
    channel_key_problems,
    channels_from,
    load_user_json,
    visible_files,
)
from segpipe.dataset.model import CaseEntry, DatasetSpec, has_regions
from segpipe.dataset.regions import region_problems
from segpipe.errors import Problem, fail
from segpipe.io.images import IMAGE_ENDINGS


def _ending_problems(ending: str, path: Path) -> list[Problem]:
    """Problems with dataset.json's ``file_ending`` (must be a supported ending with its leading dot)."""
    if not ending.startswith("."):
        return [Problem(f"dataset.json 'file_ending' is '{ending}', without the leading dot",
                        f'write "file_ending": ".{ending.strip()}"', str(path))]
    if ending.lower() not in IMAGE_ENDINGS:
        return [Problem(f"dataset.json 'file_ending' '{ending}' is not a supported image ending",
                        f"use one of {', '.join(IMAGE_ENDINGS)} (convert the files if needed)", str(path))]
    return []


def discover_nnunet(source: Path, options: OnboardOptions) -> tuple[DatasetSpec, list[Problem]]:
    dj_path = source / "dataset.json"
    if not dj_path.is_file():
        raise fail("nnU-Net raw folder without dataset.json", "add dataset.json (channel_names, labels, "
                   "file_ending) or use --format msd/flat", file=dj_path)
    dj, problems = load_user_json(dj_path, (("channel_names", dict), ("labels", dict), ("file_ending", str)),
                                  "nnU-Net v2")
    if not problems:
        problems = _ending_problems(dj["file_ending"], dj_path)
        if not options.channels:
            problems += channel_key_problems(dj["channel_names"], "channel_names", dj_path)
    if problems:
        return DatasetSpec(options.name, str(source), "nnunet", {}, {}, ".nii.gz", []), problems
    labels: dict[str, int | list[int]] = dict(options.labels)
    order = None
    if not labels:
        regions = has_regions(dj["labels"])
        if regions:
            region_issues = region_problems(dj["labels"], dj.get("regions_class_order"), str(dj_path))
            problems += region_issues
            order = None if region_issues else dj["regions_class_order"]
        for name, value in dj["labels"].items():
            if isinstance(value, (list, tuple)):
                if all(isinstance(x, int) and not isinstance(x, bool) for x in value):
                    labels[str(name)] = [int(x) for x in value]
            elif not isinstance(value, int) or isinstance(value, bool):
                problems.append(Problem(f"label '{name}' has value {value!r}, expected an integer",
                                        "use integer label values", str(dj_path)))
            else:
                labels[str(name)] = value
    ending = dj["file_ending"]
    channels = channels_from(options, dj["channel_names"])
    n_ch = len(channels)
    folder, without_labels = _unlabelled_declaration(dj, source, dj_path, problems)
    images = _channel_files(source, "imagesTr", ending, n_ch, problems)
    label_ids = {p.name[: -len(ending)] for p in visible_files(source / "labelsTr") if p.name.endswith(ending)}
    cases, unlabelled = [], []
    for cid, files in sorted(images.items()):
        if cid in label_ids:
            cases.append(CaseEntry(cid, files, f"labelsTr/{cid}{ending}"))
        elif without_labels:
            unlabelled.append(CaseEntry(cid, files))
        else:
            cases.append(CaseEntry(cid, files, None))  # refused by validation, which names the fixes
    for lid in sorted(label_ids - set(images)):
        problems.append(Problem("label file without an image", "add the image or remove the label",
                                str(source / "labelsTr" / f"{lid}{ending}"), lid))
    if folder is not None and (source / folder).is_dir():
        extra = _channel_files(source, folder, ending, n_ch, problems)
        for cid in sorted(set(extra) & set(images)):
            problems.append(Problem(f"case id '{cid}' is both in imagesTr and in {folder}",
                                    f"rename one of them: case ids are unique across {folder} and imagesTr",
                                    str(source / folder), cid))
        unlabelled += [CaseEntry(cid, files) for cid, files in sorted(extra.items()) if cid not in images]
    spec = DatasetSpec(name=options.name, source=str(source), format="nnunet", channels=channels, labels=labels,
                       file_ending=ending, cases=cases,
                       regions_class_order=[int(v) for v in order] if order else None, unlabelled=unlabelled)
    return spec, problems


UNLABELLED_FOLDER = "imagesUnlabelled"


def _unlabelled_declaration(dj: dict, source: Path, dj_path: Path, problems: list[Problem]
                            ) -> tuple[str | None, bool]:
    """dataset.json's ``"unlabelled"``: ``(folder of unlabelled images, images of imagesTr without a label are
    unlabelled)``; a declared folder must exist. Without the key: ``imagesUnlabelled`` (used when it exists),
    False."""
    decl = dj.get("unlabelled")
    if decl is None:
        return UNLABELLED_FOLDER, False
    fix = ('write e.g. "unlabelled": {"folder": "imagesUnlabelled", "images_without_labels": false} '
           '(both keys optional)')
    if not isinstance(decl, dict) or set(decl) - {"folder", "images_without_labels"}:
        problems.append(Problem(f"dataset.json 'unlabelled' is {decl!r}, not an object with 'folder' and/or "
                                "'images_without_labels'", fix, str(dj_path)))
        return None, False
    folder = decl.get("folder", UNLABELLED_FOLDER)
    without = decl.get("images_without_labels", False)
    if not isinstance(without, bool):
        problems.append(Problem(f"dataset.json 'unlabelled.images_without_labels' is {without!r}, not true/false",
                                fix, str(dj_path)))
        without = False
    if not isinstance(folder, str) or not folder or "/" in folder or "\\" in folder or folder.startswith("."):
        problems.append(Problem(f"dataset.json 'unlabelled.folder' is {folder!r}, not a folder name inside the "
                                "data set's folder", fix, str(dj_path)))
        return None, without
    if "folder" in decl and not (source / folder).is_dir():
        problems.append(Problem(f"dataset.json declares unlabelled images in '{folder}', which does not exist",
                                f"create {source / folder} with <case>_0000<file_ending> images, or fix the name",
                                str(dj_path)))
        return None, without
    return folder, without


def _channel_files(source: Path, folder: str, ending: str, n_ch: int, problems: list[Problem]
                   ) -> dict[str, list[str]]:
    """``{case: [file per channel]}`` (relative to ``source``) of ``folder``'s ``<case>_<XXXX><ending>`` files;
    cases with missing or extra channel files are left out, with a problem each."""
    pat = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(ending) + "$")
    found: dict[str, dict[int, str]] = {}
    for p in visible_files(source / folder):
        m = pat.match(p.name)
        if m:
            found.setdefault(m["case"], {})[int(m["ch"])] = f"{folder}/{p.name}"
        elif p.name.endswith(ending):
            problems.append(Problem("image file name lacks the channel suffix _XXXX",
                                    f"rename it to <case>_0000{ending}", str(p)))
    out: dict[str, list[str]] = {}
    for cid, chans in found.items():
        missing = [i for i in range(n_ch) if i not in chans]
        extra = [i for i in chans if i >= n_ch]
        if missing:
            problems.append(Problem(f"missing channel file(s) {[f'{cid}_{i:04d}{ending}' for i in missing]}",
                                    "add them, or fix channel_names in dataset.json", str(source / folder), cid))
        if extra:
            problems.append(Problem(f"extra channel file(s) {[f'{cid}_{i:04d}{ending}' for i in extra]} beyond the "
                                    f"{n_ch} declared channel(s)", "declare the channel in channel_names or "
                                    "remove the file", str(source / folder), cid))
        if not (missing or extra):
            out[cid] = [chans[i] for i in range(n_ch)]
    return out
