"""The workspace's ``dataset.json``: what a dataset is made of, independent of the user's folder layout.

Paths of case files are relative to the dataset's ``raw/`` folder (a link to, or with ``--copy`` a copy of,
the user's folder); they never contain ``..`` and never start with ``/``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from segpipe.errors import Problem, SegpipeError, fail

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
IGNORE_LABEL = "ignore"  # nnU-Net's name for unannotated voxels (sparse labels); its value must be the highest

LabelValue = int | tuple[int, ...]
"""What a label name stands for: one integer value of the label maps, or (region-based training, nnU-Net's
convention) a region: the tuple of the integer values it is made of, e.g. ``whole = (1, 2)``."""


def _value(v: Any) -> LabelValue:
    return tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else int(v)


def output_classes(labels: Mapping[str, Any]) -> dict[str, LabelValue]:
    """The classes (or regions) a network predicts: every label but :data:`IGNORE_LABEL` (name -> value or
    region, background 0)."""
    return {name: _value(v) for name, v in labels.items() if name != IGNORE_LABEL}


def ignore_value(labels: Mapping[str, Any]) -> int | None:
    """The label value of unannotated voxels (the label named ``ignore``), or None when every voxel is labelled."""
    v = labels.get(IGNORE_LABEL)
    return None if v is None else int(v)


def has_regions(labels: Mapping[str, Any]) -> bool:
    """Whether ``labels`` declare regions (any value a list of integers): region-based training."""
    return any(isinstance(v, (list, tuple)) for v in labels.values())


def label_values(labels: Mapping[str, Any]) -> set[int]:
    """Every integer value a label map of these labels may hold (regions unpacked, ``ignore`` included)."""
    out: set[int] = set()
    for v in labels.values():
        out.update(int(x) for x in v) if isinstance(v, (list, tuple)) else out.add(int(v))
    return out


def case_id_problem(case_id: str) -> str | None:
    """Why ``case_id`` is not safe as a file name component, or None when it is."""
    if not case_id:
        return "empty case id"
    if "/" in case_id or "\\" in case_id:
        return f"case id '{case_id}' contains a path separator"
    if ".." in case_id:
        return f"case id '{case_id}' contains '..'"
    if not SAFE_ID.match(case_id):
        return f"case id '{case_id}' has characters other than letters, digits, '.', '_', '+', '-' or starts with one"
    return None


def relative_path_problem(rel: str) -> str | None:
    """Why ``rel`` (a path inside the raw folder) is unsafe, or None."""
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute():
        return f"absolute path '{rel}' (paths must be relative to the data set folder)"
    if ".." in p.parts:
        return f"path '{rel}' leaves the data set folder ('..')"
    return None


@dataclass
class CaseEntry:
    """One case. ``images`` has one path per channel, or a single multi-channel (4D) file when the dataset
    has ``channels_in_file``. ``spacing`` overrides the files' spacing (array axis order, mm), for formats that
    carry none (PNG). ``subject`` names the person the scan belongs to (``--subject-csv``/``--subject-pattern``):
    cross-validation keeps all cases of one subject in the same fold; None when not given. ``attributes``: the
    case's row of ``onboard --attributes`` (column -> value, as text: sex, age group, site, scanner, ...); they
    reach the loss in every batch's metadata and ``evaluate --group-by`` in the workspace."""

    id: str
    images: list[str]
    label: str | None = None
    spacing: list[float] | None = None
    subject: str | None = None
    attributes: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "images": list(self.images), "label": self.label}
        if self.spacing is not None:
            d["spacing"] = list(self.spacing)
        if self.subject is not None:
            d["subject"] = self.subject
        if self.attributes is not None:
            d["attributes"] = dict(self.attributes)
        return d

    def files(self) -> list[str]:
        """The case's files (images, then the label when it has one), relative to ``raw/``."""
        return list(self.images) + ([self.label] if self.label else [])


@dataclass
class DatasetSpec:
    """Everything segpipe needs to know about a dataset; serialised as the workspace's dataset.json.

    Data roles: :attr:`cases` are the labelled cases (cross-validation, fingerprint, evaluation);
    :attr:`unlabelled` are images without a label (``imagesUnlabelled/`` of an nnU-Net folder, or training images
    without a label where the folder's dataset.json declares them unlabelled). They are validated and
    preprocessed like the others and used only by trainers that learn from unlabelled images (``bcp``)."""

    name: str
    source: str
    format: str
    channels: dict[str, str]
    labels: dict[str, int | list[int]]
    file_ending: str
    cases: list[CaseEntry]
    channels_in_file: bool = False
    label_value_map: dict[str, int] | None = None
    raw_mode: str = "link"
    allow_external_links: bool = False
    notes: list[str] = field(default_factory=list)
    regions_class_order: list[int] | None = None
    unlabelled: list[CaseEntry] = field(default_factory=list)
    attribute_columns: list[str] = field(default_factory=list)

    @property
    def all_cases(self) -> list[CaseEntry]:
        """Every case the data set holds: the labelled :attr:`cases`, then the :attr:`unlabelled` ones."""
        return list(self.cases) + list(self.unlabelled)

    @property
    def attributes(self) -> dict[str, dict[str, str]]:
        """Case id -> attributes (``onboard --attributes``), for the cases (labelled or not) that have them."""
        return {c.id: dict(c.attributes) for c in self.all_cases if c.attributes is not None}

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def classes(self) -> dict[str, LabelValue]:
        """The output classes (background included): :attr:`labels` without ``ignore``; with regions, the
        foreground entries are regions (tuples of label values)."""
        return output_classes(self.labels)

    @property
    def regions(self) -> list[tuple[int, ...]] | None:
        """Region-based training: the foreground regions in dataset.json's order, one network output (sigmoid)
        each (see :mod:`segpipe.dataset.regions`); None for ordinary labels (softmax over :attr:`classes`)."""
        if not has_regions(self.labels):
            return None
        return [v if isinstance(v, tuple) else (v,) for v in self.classes.values() if v != 0]

    @property
    def region_order(self) -> list[int] | None:
        """The value written for each region when predictions become a label map (``regions_class_order``;
        later regions overwrite earlier ones), or None without regions."""
        return None if self.regions is None else list(self.regions_class_order or [])

    @property
    def n_outputs(self) -> int:
        """Network output channels: one per region with regions, else :attr:`n_classes` (background included)."""
        regions = self.regions
        return len(regions) if regions is not None else self.n_classes

    @property
    def ignore_value(self) -> int | None:
        """The value of the ``ignore`` label (unannotated voxels), or None."""
        return ignore_value(self.labels)

    @property
    def n_classes(self) -> int:
        """Number of output classes including background (``ignore`` is not one)."""
        return len(self.classes)

    @property
    def subjects(self) -> dict[str, str]:
        """Case id -> subject, for the cases that have one (empty when no grouping was given)."""
        return {c.id: c.subject for c in self.cases if c.subject is not None}

    def case(self, case_id: str) -> CaseEntry:
        for c in self.all_cases:
            if c.id == case_id:
                return c
        raise KeyError(case_id)

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "format": self.format, "raw_mode": self.raw_mode,
                "allow_external_links": self.allow_external_links,
                "channels": dict(self.channels), "labels": dict(self.labels), "file_ending": self.file_ending,
                "channels_in_file": self.channels_in_file, "label_value_map": self.label_value_map,
                "notes": list(self.notes), "num_cases": len(self.cases),
                **({"regions_class_order": list(self.regions_class_order)} if self.regions_class_order else {}),
                **({"attribute_columns": list(self.attribute_columns)} if self.attribute_columns else {}),
                "cases": [c.to_dict() for c in self.cases],
                **({"num_unlabelled": len(self.unlabelled), "unlabelled": [c.to_dict() for c in self.unlabelled]}
                   if self.unlabelled else {})}

    @classmethod
    def from_dict(cls, d: dict, file: str | Path | None = None) -> DatasetSpec:
        """Parse and check a workspace dataset.json (types, required keys, safe ids and paths)."""
        problems: list[Problem] = []

        def need(key: str, typ: type | tuple):
            if key not in d:
                problems.append(Problem(f"missing field '{key}'", "re-run `segpipe onboard --force`", file=str(file)))
                return None
            if not isinstance(d[key], typ):
                problems.append(Problem(f"field '{key}' should be {getattr(typ, '__name__', typ)}, "
                                        f"found {type(d[key]).__name__}", "re-run `segpipe onboard --force`",
                                        file=str(file)))
                return None
            return d[key]

        name, source, fmt = need("name", str), need("source", str), need("format", str)
        channels, labels, ending = need("channels", dict), need("labels", dict), need("file_ending", str)
        cases = need("cases", list)
        if problems:
            raise SegpipeError(problems)
        unlabelled = d.get("unlabelled", [])
        if not isinstance(unlabelled, list):
            raise fail("field 'unlabelled' should be a list of cases", "re-run `segpipe onboard --force`", file=file)
        entries = [_case_from_dict(c, file) for c in cases]
        unlabelled_entries = [_case_from_dict(c, file) for c in unlabelled]
        if any(c.label for c in unlabelled_entries):
            raise fail("an unlabelled case has a label", "re-run `segpipe onboard --force`", file=file)
        return cls(name=name, source=source, format=fmt, channels={str(k): str(v) for k, v in channels.items()},
                   labels={str(k): ([int(x) for x in v] if isinstance(v, list) else int(v)) for k, v in labels.items()},
                   file_ending=ending, cases=entries,
                   channels_in_file=bool(d.get("channels_in_file", False)),
                   label_value_map=d.get("label_value_map"), raw_mode=d.get("raw_mode", "link"),
                   allow_external_links=bool(d.get("allow_external_links", False)),
                   notes=list(d.get("notes", [])),
                   regions_class_order=([int(v) for v in d["regions_class_order"]]
                                        if d.get("regions_class_order") else None),
                   unlabelled=unlabelled_entries,
                   attribute_columns=[str(c) for c in d.get("attribute_columns", [])])


def _case_from_dict(c: Any, file: str | Path | None) -> CaseEntry:
    """One case entry of a workspace dataset.json, checked (safe id and paths, types)."""
    if not isinstance(c, dict) or not isinstance(c.get("id"), str) or not isinstance(c.get("images"), list):
        raise fail(f"malformed case entry {c!r}", "re-run `segpipe onboard --force`", file=file)
    why = case_id_problem(c["id"])
    for rel in list(c["images"]) + ([c["label"]] if c.get("label") else []):
        why = why or relative_path_problem(str(rel))
    if why:
        raise fail(why, "re-run `segpipe onboard --force` on the original folder", file=file)
    subject = c.get("subject")
    if subject is not None and not isinstance(subject, str):
        raise fail(f"case '{c['id']}' has a subject {subject!r} that is not a string",
                   "re-run `segpipe onboard --force`", file=file)
    attributes = c.get("attributes")
    if attributes is not None and not (isinstance(attributes, dict)
                                       and all(isinstance(v, str) for v in attributes.values())):
        raise fail(f"case '{c['id']}' has attributes {attributes!r} that are not a mapping of text values",
                   "re-run `segpipe onboard --force`", file=file)
    return CaseEntry(c["id"], [str(i) for i in c["images"]], c.get("label"), c.get("spacing"), subject,
                     None if attributes is None else {str(k): v for k, v in attributes.items()})
