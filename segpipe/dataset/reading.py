"""Reading one case of a dataset into arrays: channels first, labels mapped to the declared values."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segpipe.dataset.model import CaseEntry, DatasetSpec
from segpipe.errors import fail
from segpipe.io.images import Geometry, read_image


def resolve(raw_root: Path, rel: str, allow_external_links: bool = False) -> Path:
    """Absolute path of a dataset file; refuses paths (symlinks included) that leave ``raw_root`` unless
    ``allow_external_links``. When ``raw_root`` is the workspace's link to the user's folder, the path is
    given inside the user's folder, so that messages name the file the user knows."""
    if raw_root.is_symlink():
        raw_root = raw_root.resolve()
    p = raw_root / rel
    if allow_external_links:
        return p
    root = raw_root.resolve()
    real = p.resolve()
    if real != root and root not in real.parents:
        raise fail(f"path resolves to {real}, outside the data set folder {root}",
                   "replace the link by the file itself (cp -L), or onboard with --allow-external-links if you "
                   "trust where the links point", file=p)
    return p


def read_channels(spec: DatasetSpec, raw_root: Path, case: CaseEntry) -> tuple[np.ndarray, Geometry]:
    """Read a case's image channels as a float32 array ``(c, z, y, x)`` (3D) or ``(c, y, x)`` (2D).

    Raises a :class:`~segpipe.errors.SegpipeError` naming the file when a channel is unreadable or its
    geometry disagrees with the first channel.
    """
    arrays, geo0 = [], None
    for rel in case.images:
        path = resolve(raw_root, rel, spec.allow_external_links)
        arr, geo = read_image(path)
        if geo.extra.get("components", 1) > 1:
            if np.all(arr == arr[:1]):
                arr = arr[0]
            else:
                raise fail(f"colour image with {arr.shape[0]} components", "convert it to grayscale "
                           "(or split the colours into one file per channel)", file=path, case=case.id)
        if spec.channels_in_file:
            expected_nd = 4 if spec.n_channels > 1 else 3
            if arr.ndim != expected_nd:
                raise fail(f"expected a {expected_nd}D file holding {spec.n_channels} channel(s), found {arr.ndim}D",
                           "check the dataset's modality list", file=path, case=case.id)
            if spec.n_channels > 1:
                geo = Geometry(geo.shape[1:], geo.spacing[1:], geo.origin[:3], _direction3(geo.direction), geo.extra)
                arrays.extend(list(arr))
            else:
                arrays.append(arr)
        else:
            arrays.append(arr)
        if geo0 is None:
            geo0 = geo
        else:
            diff = geo0.mismatches(geo)
            if diff:
                raise fail(f"channel geometry differs from the first channel: {'; '.join(diff)}",
                           "resample all channels of a case onto the same grid", file=path, case=case.id)
    assert geo0 is not None
    if case.spacing is not None:
        geo0 = geo0.with_spacing(tuple(case.spacing))
    data = np.stack([a.astype(np.float32, copy=False) for a in arrays])
    return data, geo0


def _direction3(direction4: tuple[float, ...]) -> tuple[float, ...]:
    m = np.asarray(direction4).reshape(4, 4)[:3, :3]
    return tuple(float(v) for v in m.ravel())


def map_label_values(label: np.ndarray, value_map: dict[str, int] | None) -> np.ndarray:
    """Apply the dataset's label value map (e.g. ``{"255": 1}`` for 0/255 masks)."""
    if not value_map:
        return label
    out = label.copy()
    for src, dst in value_map.items():
        out[label == float(src)] = dst
    return out


def read_label(spec: DatasetSpec, raw_root: Path, case: CaseEntry) -> tuple[np.ndarray, Geometry]:
    """Read a case's label map as it is in the file (after the value map), spatial axes only."""
    if case.label is None:
        raise fail("case has no label file", "add the label or remove the case", case=case.id)
    path = resolve(raw_root, case.label, spec.allow_external_links)
    arr, geo = read_image(path)
    if geo.extra.get("components", 1) > 1:
        arr = arr[0]  # masks stored as RGB(A): channels carry the same mask; use the first
    if case.spacing is not None:
        geo = geo.with_spacing(tuple(case.spacing))
    return map_label_values(arr, spec.label_value_map), geo


def read_case(spec: DatasetSpec, raw_root: Path, case: CaseEntry) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Read image channels ``(c, ...)`` float32 and the label map ``(...)`` as int16 (values as declared)."""
    data, geo = read_channels(spec, raw_root, case)
    label, _ = read_label(spec, raw_root, case)
    return data, np.rint(label).astype(np.int16), geo
