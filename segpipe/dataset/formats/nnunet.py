"""nnU-Net v2 raw folders: dataset.json with ``channel_names``, ``labels`` ({name: value}), ``file_ending``;
``imagesTr/<case>_<XXXX><ending>`` (one file per channel) and ``labelsTr/<case><ending>``."""
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
    pat = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(ending) + "$")
    images: dict[str, dict[int, str]] = {}
    for p in visible_files(source / "imagesTr"):
        m = pat.match(p.name)
        if m:
            images.setdefault(m["case"], {})[int(m["ch"])] = f"imagesTr/{p.name}"
        elif p.name.endswith(ending):
            problems.append(Problem("image file name lacks the channel suffix _XXXX",
                                    f"rename it to <case>_0000{ending}", str(p)))
    label_ids = {p.name[: -len(ending)] for p in visible_files(source / "labelsTr") if p.name.endswith(ending)}
    cases = []
    for cid in sorted(images):
        chans = images[cid]
        missing = [i for i in range(n_ch) if i not in chans]
        extra = [i for i in chans if i >= n_ch]
        if missing:
            problems.append(Problem(f"missing channel file(s) {[f'{cid}_{i:04d}{ending}' for i in missing]}",
                                    "add them, or fix channel_names in dataset.json", str(source / "imagesTr"), cid))
        if extra:
            problems.append(Problem(f"extra channel file(s) {[f'{cid}_{i:04d}{ending}' for i in extra]} beyond the "
                                    f"{n_ch} declared channel(s)", "declare the channel in channel_names or "
                                    "remove the file", str(source / "imagesTr"), cid))
        if missing or extra:
            continue
        cases.append(CaseEntry(cid, [chans[i] for i in range(n_ch)],
                               f"labelsTr/{cid}{ending}" if cid in label_ids else None))
    for lid in sorted(label_ids - set(images)):
        problems.append(Problem("label file without an image", "add the image or remove the label",
                                str(source / "labelsTr" / f"{lid}{ending}"), lid))
    spec = DatasetSpec(name=options.name, source=str(source), format="nnunet", channels=channels, labels=labels,
                       file_ending=ending, cases=cases,
                       regions_class_order=[int(v) for v in order] if order else None)
    return spec, problems
