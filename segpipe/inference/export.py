"""Export of predicted probabilities into the raw image's geometry.

Preprocessing cropped a case to its nonzero bounding box and resampled it to the target spacing; export undoes
both: probabilities are resampled back to the cropped shape and placed into the raw shape, whose outside is
background. The label map is their argmax, written with the raw geometry.

The orders are the plan's (issue 12): each configuration's :class:`~segpipe.planning.plans.Resampling`, as
preprocessing used it for the one-hot label maps (``label_order`` on every axis, ``coarse_axis_order`` along the
coarse axis of an anisotropic case, decided with ``anisotropy_threshold``); the plans segpipe writes say order 1
(linear) and order 0 (nearest) along the coarse axis, nnU-Net's choice for probabilities. How each order maps to
a torch kernel (0 nearest, 1 linear, 2 to 5 cubic convolution) is in :mod:`segpipe.inference.resample_torch`.
Callers pass ``config.resampling``; a caller without a plan (``resampling=None``) gets
:data:`PLANNER_DEFAULT_RESAMPLING`, the values segpipe's planner writes.

Memory stays bounded (issue 12): :func:`export_prediction` resamples one class and a slab of slices at a time in
torch (:mod:`segpipe.inference.resample_torch`), keeps a running maximum and argmax over the classes (one float32
and one uint8 volume of the cropped shape), and streams saved probabilities (float16, ``(classes, *raw shape)``,
e.g. ``(c, z, y, x)``) into a compressed ``.npz`` as they are made. No array of all classes at the raw shape is
ever made. Probabilities are not renormalised after resampling: every kernel's weights sum to 1, so the sum over
classes stays 1 (to float32 rounding); nearest neighbour and linear interpolation keep each value in ``[0, 1]``,
cubic convolution (a plan with an order of 2 or more) may overshoot it slightly near sharp edges.

Region-based models (:mod:`segpipe.dataset.regions`) give one sigmoid probability per region instead of a softmax
over classes: every function that makes a label map takes ``region_order`` (dataset.json's
``regions_class_order``), and then paints each region whose probability exceeds 0.5 with its value, in order,
instead of taking the argmax; outside the crop box every region's probability is 0.

Every label map segpipe writes (final validation, ``segpipe predict``) is written by :func:`export_prediction`
(probabilities at the configuration's spacing) or :func:`write_prediction` (probabilities already in the raw
geometry); both write through the same code.
"""
from __future__ import annotations

import contextlib
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segpipe.dataset.regions import REGION_THRESHOLD
from segpipe.inference.resample_torch import SlabResampler, probability_orders
from segpipe.io.atomic import atomic_path, verify_zip
from segpipe.io.images import Geometry, GeometryDict, file_ending, write_image
from segpipe.planning import constants as C
from segpipe.planning.plans import Resampling

SLAB_BYTES = 32 << 20          # float32 bytes of one class' slab of output slices resampled at a time
PROBABILITIES_KEY = "probabilities"
PROBABILITIES_DTYPE = np.float16
NPZ_COMPRESSLEVEL = 1          # zlib level of saved probabilities (numpy's savez_compressed uses 6: 2-3x slower)
READ_PIECE_BYTES = 1 << 20     # bytes decompressed per read when saved probabilities are streamed back

Parts = Sequence[tuple[torch.Tensor | np.ndarray, dict]]  # (probabilities (c, Z, Y, X), props) per configuration

# What segpipe's planner writes into every configuration's ``resampling`` (segpipe/planning/planner.py): used
# only by callers that have no plan to hand (``resampling=None``); predict passes each configuration's own.
PLANNER_DEFAULT_RESAMPLING = Resampling(
    image_order=C.IMAGE_RESAMPLING_ORDER, label_order=C.LABEL_RESAMPLING_ORDER, label_mode="one-hot",
    anisotropy_threshold=C.ANISOTROPY_THRESHOLD, coarse_axis_order=C.COARSE_AXIS_RESAMPLING_ORDER)


def _resamplings(parts: Parts, resampling: Sequence[Resampling] | Resampling | None) -> list[Resampling]:
    """One :class:`Resampling` per part: ``resampling`` given per part, one for all, or the planner's default."""
    if resampling is None:
        return [PLANNER_DEFAULT_RESAMPLING] * len(parts)
    if isinstance(resampling, Resampling):
        return [resampling] * len(parts)
    out = list(resampling)
    if len(out) != len(parts):
        raise ValueError(f"{len(out)} resampling entries for {len(parts)} sets of probabilities (one per "
                         "configuration)")
    return out


def probabilities_path(out_path: str | Path) -> Path:
    """``<out_path without its image ending>.npz``: where the probabilities of ``out_path`` go."""
    out_path = Path(out_path)
    end = file_ending(out_path) or out_path.suffix
    name = out_path.name[: len(out_path.name) - len(end)] if end else out_path.name
    return out_path.with_name(name + ".npz")


def _label_dtype(n_classes: int, region_order: Sequence[int] | None = None) -> type[np.unsignedinteger]:
    if region_order is not None:
        n_classes = max(region_order, default=0) + 1
    return np.uint8 if n_classes <= 256 else np.uint16


def _check_regions(n_channels: int, region_order: Sequence[int] | None) -> None:
    if region_order is not None and len(region_order) != n_channels:
        raise ValueError(f"{n_channels} region probabilities for {len(region_order)} entries of regions_class_order")


def _slab_rows(plane_voxels: int) -> int:
    """Slices per slab: ``SLAB_BYTES`` of float32 planes of ``plane_voxels``, at least one."""
    return max(1, int(SLAB_BYTES) // max(1, 4 * int(plane_voxels)))


def label_map(probs: np.ndarray, region_order: Sequence[int] | None = None) -> np.ndarray:
    """The label map (argmax over classes; uint8, uint16 beyond 256 classes) of probabilities
    ``(n_classes, *spatial)``: ``(*spatial)``, e.g. ``(z, y, x)``. Made slab by slab along the first spatial axis
    (no int64 array of the whole image). With ``region_order``, ``probs`` are region probabilities
    ``(n_regions, *spatial)``, painted in order (see the module docstring)."""
    probs = np.asarray(probs)
    if region_order is not None:
        _check_regions(probs.shape[0], region_order)
        out = np.zeros(probs.shape[1:], dtype=_label_dtype(0, region_order))
        for c, value in enumerate(region_order):
            out[probs[c] > REGION_THRESHOLD] = value
        return out
    out = np.empty(probs.shape[1:], dtype=_label_dtype(probs.shape[0]))
    if out.ndim == 0 or out.size == 0:
        out[...] = np.argmax(probs, axis=0)
        return out
    rows = _slab_rows(int(np.prod(probs.shape[2:], dtype=np.int64)) * probs.shape[0])
    for s in range(0, out.shape[0], rows):
        out[s:s + rows] = np.argmax(probs[:, s:s + rows], axis=0)
    return out


@contextlib.contextmanager
def _npz_stream(path: Path, shape: Sequence[int], dtype=PROBABILITIES_DTYPE, key: str = PROBABILITIES_KEY,
                compresslevel: int | None = None) -> Iterator[Callable[[np.ndarray], None]]:
    """Write one array ``key`` of ``shape`` into a compressed ``.npz`` at ``path`` (atomically) from chunks given
    in C order: yields ``write(chunk)``. The file is what ``np.savez_compressed(path, key=array)`` would hold
    (``np.load(path)[key]`` reads it), without the whole array ever being in memory."""
    dtype = np.dtype(dtype)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    written = 0
    with atomic_path(path, verify=verify_zip) as tmp:
        level = NPZ_COMPRESSLEVEL if compresslevel is None else compresslevel
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
            with zf.open(key + ".npy", "w", force_zip64=True) as fh:
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                          "shape": tuple(int(s) for s in shape)}
                np.lib.format.write_array_header_2_0(fh, header)

                def write(chunk: np.ndarray) -> None:
                    nonlocal written
                    chunk = np.ascontiguousarray(chunk, dtype=dtype)
                    if chunk.size:
                        fh.write(chunk.reshape(-1).view(np.uint8).data)  # no bytes copy
                    written += chunk.nbytes

                yield write
                if written != expected:
                    raise ValueError(f"{path.name}: {written} bytes of probabilities written, expected {expected}")


def save_probabilities_npz(path: str | Path, probs: np.ndarray) -> None:
    """Save probabilities ``(n_classes, *spatial)`` as float16 (key ``probabilities``) in a compressed ``.npz``,
    converted slab by slab (no float16 copy of the whole array)."""
    probs = np.asarray(probs)
    with _npz_stream(Path(path), probs.shape) as write:
        if probs.ndim < 2:
            write(probs)
            return
        rows = _slab_rows(int(np.prod(probs.shape[2:], dtype=np.int64)))
        for c in range(probs.shape[0]):
            for s in range(0, probs.shape[1], rows):
                write(probs[c, s:s + rows])


class ProbabilitiesReader:
    """Sequential reader of saved probabilities (a ``.npz`` of :func:`save_probabilities_npz` or
    :func:`export_prediction`: key ``probabilities``, ``(n_classes, *raw shape)``, e.g. ``(c, z, y, x)``, float16)
    that never holds the whole array: :meth:`read` returns the next values in C order (class by class, and slab
    by slab of slices along the first spatial axis within a class), in the stored dtype, decompressed as they
    are read. ``shape`` and ``dtype`` are the stored array's. A file whose array is not in C order or has a
    header numpy's public readers do not parse is loaded whole (segpipe never writes one)."""

    def __init__(self, path: str | Path, key: str = PROBABILITIES_KEY):
        self.path = Path(path)
        self._zip = zipfile.ZipFile(self.path)
        self._fh: Any = None  # the zip member (typing's IO[bytes] has no readinto)
        self._array: np.ndarray | None = None
        self._pos = 0  # values read so far
        try:
            self._fh = self._zip.open(key + ".npy")
            version = np.lib.format.read_magic(self._fh)
            header = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            shape, fortran, dtype = header(self._fh) if header is not None else ((), True, None)
            if fortran or dtype is None or dtype.hasobject:  # not what segpipe writes: load it whole
                self._fh.close()
                self._fh = None
                with np.load(self.path, allow_pickle=False) as npz:
                    array = npz[key]
                shape, dtype = array.shape, array.dtype
                self._array = np.ascontiguousarray(array).reshape(-1)
        except BaseException:
            self.close()
            raise
        self.shape: tuple[int, ...] = tuple(int(s) for s in shape)
        self.dtype: np.dtype = np.dtype(dtype)

    def read(self, shape: Sequence[int]) -> np.ndarray:
        """The next ``prod(shape)`` stored values as an array of ``shape`` (stored dtype, a new array)."""
        count = int(np.prod(shape, dtype=np.int64))
        if self._pos + count > int(np.prod(self.shape, dtype=np.int64)):
            raise ValueError(f"{self.path.name}: reading past the end of the saved probabilities {self.shape}")
        if self._array is not None:
            out = self._array[self._pos:self._pos + count].copy().reshape(tuple(shape))
        else:
            out = np.empty(tuple(shape), dtype=self.dtype)
            view = out.reshape(-1).view(np.uint8).data  # a memoryview of out's bytes
            filled = 0
            while filled < out.nbytes:  # in pieces: zipfile reads through a bytes copy of what is asked for
                n = self._fh.readinto(view[filled:filled + READ_PIECE_BYTES])
                if not n:
                    raise ValueError(f"{self.path.name}: the saved probabilities end early (damaged file)")
                filled += n
        self._pos += count
        return out

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._zip.close()

    def __enter__(self) -> ProbabilitiesReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ensemble_label_map(paths: Sequence[str | Path], region_order: Sequence[int] | None = None) -> np.ndarray:
    """The label map of one case from the saved probabilities of several configurations (``.npz`` files of
    :func:`export_prediction`, each ``(n_classes, *raw shape)``, e.g. ``(c, z, y, x)``): the argmax over classes
    of their mean, ``(*raw shape)``, uint8 (uint16 beyond 256 classes).

    The result is identical to ``label_map(np.mean([np.load(p)["probabilities"].astype(np.float32) for p in
    paths], axis=0))`` (float32 sums in the order of ``paths``, divided as ``np.mean`` divides, first class on
    ties), but the files are streamed (:class:`ProbabilitiesReader`) class by class and slab by slab: peak memory
    is one float32 and one label volume of the raw shape (the running maximum and argmax) and a few slabs, not
    the whole probabilities of each configuration. With ``region_order`` the files hold region probabilities
    and their mean is painted region by region (module docstring)."""
    if not paths:
        raise ValueError("no probabilities to ensemble")
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(ProbabilitiesReader(p)) for p in paths]
        shape = readers[0].shape
        for r in readers[1:]:
            if r.shape != shape:
                raise ValueError(f"saved probabilities of shapes {shape} ({readers[0].path}) and {r.shape} "
                                 f"({r.path}) cannot be averaged")
        if len(shape) < 2:
            raise ValueError(f"{readers[0].path}: probabilities of shape {shape}, expected (n_classes, *spatial)")
        n_classes, spatial = shape[0], shape[1:]
        plane = spatial[1:]
        rows = _slab_rows(int(np.prod(plane, dtype=np.int64)))
        count = np.intp(len(readers))  # np.mean's divisor, so that the quotient rounds as np.mean's does
        _check_regions(n_classes, region_order)
        seg = np.zeros(spatial, dtype=_label_dtype(n_classes, region_order))
        best = np.empty(spatial if region_order is None else (0,), dtype=np.float32)
        for c in range(n_classes):
            for s in range(0, spatial[0], rows):
                e = min(s + rows, spatial[0])
                acc = readers[0].read((e - s, *plane)).astype(np.float32)
                for r in readers[1:]:  # float16 -> float32 is exact: the same sums as adding float32 copies
                    np.add(acc, r.read((e - s, *plane)), out=acc, dtype=np.float32)
                np.true_divide(acc, count, out=acc, casting="unsafe")
                if region_order is not None:
                    seg[s:e][acc > REGION_THRESHOLD] = region_order[c]
                    continue
                b = best[s:e]
                if c == 0:
                    b[...] = acc
                else:
                    seg[s:e][acc > b] = c
                    np.maximum(b, acc, out=b)
        return seg


def _postprocessed(seg: np.ndarray, postprocess: dict | None, labels: dict[str, int] | None) -> np.ndarray:
    if postprocess:
        from segpipe.evaluation.postprocessing import apply_postprocessing

        seg = apply_postprocessing(seg, postprocess, labels or {})
    return seg


def _write_label_map(seg: np.ndarray, geometry: Geometry | GeometryDict | dict, out_path: str | Path,
                     postprocess: dict | None, labels: dict[str, int] | None) -> np.ndarray:
    seg = _postprocessed(seg, postprocess, labels)
    geo = geometry if isinstance(geometry, Geometry) else Geometry.from_dict(geometry)
    write_image(seg, geo, out_path)
    return seg


def write_prediction(probs: np.ndarray, geometry: Geometry | GeometryDict | dict, out_path: str | Path,
                     save_probabilities: bool = False, postprocess: dict | None = None,
                     labels: dict[str, Any] | None = None, region_order: Sequence[int] | None = None
                     ) -> np.ndarray:
    """Write the label map of probabilities already in the raw geometry (``(n_classes, *raw_shape)``, e.g.
    ``(n_classes, z, y, x)``) to ``out_path`` (atomically, format by ending, with ``geometry``: spacing in mm,
    origin, direction), post-processed by a stored ``postprocess`` choice (needs ``labels``) when given, and
    the probabilities (float16, key ``probabilities``, ``(n_classes, *raw_shape)``) in ``<out_path without
    ending>.npz`` (compressed) when ``save_probabilities``. ``region_order``: region probabilities (module
    docstring). Returns the label map written."""
    seg = _write_label_map(label_map(probs, region_order), geometry, out_path, postprocess, labels)
    if save_probabilities:
        save_probabilities_npz(probabilities_path(out_path), probs)
    return seg


def _as_tensor(probs: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A CPU tensor of ``probs``, without a copy for CPU tensors and arrays (a read-only memory map included; it
    is never written). Export runs on the CPU: a GPU tensor is copied over once."""
    if isinstance(probs, torch.Tensor):
        return probs.detach().cpu()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(probs))


class _Case:
    """The geometry of one case's export, checked across the parts (configurations) being averaged, and one
    resampler per part with the orders of that part's ``resampling`` (its configuration's plan entry)."""

    def __init__(self, parts: Parts, resampling: Sequence[Resampling] | Resampling | None = None,
                 regions: bool = False):
        self.regions = regions
        if not parts:
            raise ValueError("no probabilities to export")
        resamplings = _resamplings(parts, resampling)
        self.parts = [(_as_tensor(p), props) for p, props in parts]
        props0 = self.parts[0][1]
        self.case = props0.get("case")
        self.n_classes = int(self.parts[0][0].shape[0]) if self.parts[0][0].ndim else 0
        self.full_shape = tuple(int(s) for s in props0["shape_before_crop"])
        self.crop_shape = tuple(int(s) for s in props0["shape_after_crop"])
        self.box = tuple((int(a), int(b)) for a, b in props0["crop_bbox"])
        self.ndim = int(props0.get("ndim", 3))
        self.raw_shape = tuple(int(s) for s in props0["geometry"]["shape"])
        self.resamplers = []
        for (probs, props), rs in zip(self.parts, resamplings):
            if probs.ndim != 4:
                raise ValueError(f"probabilities must be (n_classes, Z, Y, X), got shape {tuple(probs.shape)}")
            expected = [int(s) for s in props["shape_after_resampling"]]
            if list(probs.shape[1:]) != expected:
                raise ValueError(f"probabilities of spatial shape {list(probs.shape[1:])} do not match "
                                 f"shape_after_resampling {expected} of case {props.get('case')}")
            if int(probs.shape[0]) != self.n_classes:
                raise ValueError(f"probabilities of {probs.shape[0]} and {self.n_classes} classes cannot be averaged")
            if (tuple(int(s) for s in props["shape_after_crop"]) != self.crop_shape
                    or tuple(int(s) for s in props["shape_before_crop"]) != self.full_shape
                    or tuple((int(a), int(b)) for a, b in props["crop_bbox"]) != self.box):
                raise ValueError(f"the configurations' preprocessing records of case {self.case} disagree on the "
                                 "crop")
            # back from the configuration's spacing to the case's (mm, (z, y, x)), with the plan's orders
            orders = probability_orders(props["target_spacing"], props["spacing"], rs)
            self.resamplers.append(SlabResampler(probs.shape[1:], self.crop_shape, orders))
        out_shape = self.full_shape[1:] if self.ndim == 2 else self.full_shape
        if out_shape != self.raw_shape:
            raise ValueError(f"exported shape {out_shape} differs from the raw image's {self.raw_shape} "
                             f"(case {self.case})")
        self.rows = _slab_rows(self.crop_shape[1] * self.crop_shape[2])

    def class_slabs(self, c: int) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Class ``c`` resampled to the cropped shape, averaged over the parts: ``(start, stop, slab)`` per slab
        of slices along the first axis (float32)."""
        for s in range(0, self.crop_shape[0], self.rows):
            e = min(s + self.rows, self.crop_shape[0])
            p: torch.Tensor | None = None
            for (probs, _), r in zip(self.parts, self.resamplers):
                q = r.slab(probs[c], s, e)
                p = q if p is None else p.add_(q)
            assert p is not None
            if len(self.parts) > 1:
                p.div_(len(self.parts))
            yield s, e, p

    def background(self, c: int) -> float:
        """The probability of class ``c`` outside the crop box: background (class 0) for sure; no region."""
        return 1.0 if c == 0 and not self.regions else 0.0


def export_prediction(parts: Parts, out_path: str | Path | None = None,
                      geometry: Geometry | GeometryDict | dict | None = None, save_probabilities: bool = False,
                      postprocess: dict | None = None, labels: dict[str, Any] | None = None,
                      resampling: Sequence[Resampling] | Resampling | None = None,
                      region_order: Sequence[int] | None = None) -> np.ndarray:
    """The label map (raw shape) of one case from its probabilities at the configurations' spacings.

    ``parts``: ``(probabilities (n_classes, Z, Y, X), props)`` per configuration (one for a single model; an
    ensemble's are averaged in the raw geometry), ``props`` the case's preprocessing record (crop box, shapes,
    spacings, raw geometry). The probabilities are resampled back class by class and slab by slab, their argmax
    kept in a running maximum, and pasted into the raw shape (background outside the crop box). Written to
    ``out_path`` (atomically, format by ending) with ``geometry`` (default: the record's), post-processed by a
    stored ``postprocess`` choice (needs ``labels``) when given, and with the probabilities (float16, key
    ``probabilities``, ``(n_classes, *raw shape)``, compressed) streamed into ``<out_path without ending>.npz``
    when ``save_probabilities``. ``resampling``: the plan's resampling of each part's configuration (one per
    part, in order; or one for all), whose orders resample that part back (None: the planner's default,
    :data:`PLANNER_DEFAULT_RESAMPLING`). ``region_order``: the parts are region probabilities, painted in this
    order with these values instead of the argmax (module docstring). Peak memory beyond the inputs: one
    float32 and one label volume of the cropped shape, and a few slabs."""
    case = _Case(parts, resampling, regions=region_order is not None)
    n = case.n_classes
    _check_regions(n, region_order)
    wide = np.dtype(_label_dtype(n, region_order)).itemsize > 1
    seg_crop = torch.zeros(case.crop_shape, dtype=torch.int32 if wide else torch.uint8)
    best = torch.empty(case.crop_shape if region_order is None else (0,), dtype=torch.float32)
    save = save_probabilities and out_path is not None
    npz_shape = (n,) + case.raw_shape
    with (_npz_stream(probabilities_path(out_path), npz_shape) if save and out_path is not None
          else contextlib.nullcontext()) as write:
        for c in range(n):
            if write is not None:
                _write_class_outside(write, case, c, before=True)
            for s, e, p in case.class_slabs(c):
                b = best[s:e]
                if region_order is not None:
                    seg_crop[s:e].masked_fill_(p > REGION_THRESHOLD, int(region_order[c]))
                elif c == 0:
                    b.copy_(p)
                else:
                    seg_crop[s:e].masked_fill_(p > b, c)
                    torch.maximum(b, p, out=b)
                if write is not None:
                    _write_class_slab(write, case, c, p)
            if write is not None:
                _write_class_outside(write, case, c, before=False)
    del best
    seg = np.zeros(case.full_shape, dtype=_label_dtype(n, region_order))
    seg[tuple(slice(a, b) for a, b in case.box)] = seg_crop.numpy()
    if case.ndim == 2:
        seg = seg[0]
    if out_path is None:
        return _postprocessed(seg, postprocess, labels)
    return _write_label_map(seg, geometry if geometry is not None else parts[0][1]["geometry"], out_path,
                            postprocess, labels)


def _write_class_outside(write: Callable[[np.ndarray], None], case: _Case, c: int, before: bool) -> None:
    """Slices of class ``c`` before (or after) the crop box along the first axis: all background."""
    (z0, z1) = case.box[0]
    count = z0 if before else case.full_shape[0] - z1
    plane = case.full_shape[1:]
    rows = _slab_rows(plane[0] * plane[1])
    block = np.full((min(rows, count),) + plane, case.background(c), dtype=PROBABILITIES_DTYPE)
    for s in range(0, count, rows):
        write(block[:min(rows, count - s)])


def _write_class_slab(write: Callable[[np.ndarray], None], case: _Case, c: int, p: torch.Tensor) -> None:
    """One slab of class ``c`` inside the crop box along the first axis, pasted into full planes."""
    (_, _), (y0, y1), (x0, x1) = case.box
    if (y1 - y0, x1 - x0) == case.full_shape[1:]:
        write(p.numpy())
        return
    block = np.full((p.shape[0],) + case.full_shape[1:], case.background(c), dtype=PROBABILITIES_DTYPE)
    block[:, y0:y1, x0:x1] = p.numpy()
    write(block)


def probabilities_to_original(probs: torch.Tensor | np.ndarray, props: dict,
                              resampling: Resampling | None = None, regions: bool = False) -> np.ndarray:
    """Probabilities ``(n_classes, Z, Y, X)`` at the target spacing -> ``(n_classes, *raw_shape)`` float32.

    ``props`` is the preprocessing record of the case (crop box, shapes, spacings, raw geometry); ``resampling``
    the configuration's plan entry whose orders are used (None: :data:`PLANNER_DEFAULT_RESAMPLING`). For 2D
    data (``props['ndim'] == 2``) the singleton Z axis is removed. This makes the whole array (one float32
    copy of all classes at the raw shape): the prediction path uses :func:`export_prediction` instead."""
    case = _Case([(probs, props)], resampling, regions=regions)
    full = np.zeros((case.n_classes,) + case.full_shape, dtype=np.float32)
    if not regions:  # outside the crop: background; region probabilities (``regions``) stay 0
        full[0] = 1.0
    (z0, _), (y0, y1), (x0, x1) = case.box
    for c in range(case.n_classes):
        for s, e, p in case.class_slabs(c):
            full[c, z0 + s:z0 + e, y0:y1, x0:x1] = p.numpy()
    return full[:, 0] if case.ndim == 2 else full


def export_label_map(probs: torch.Tensor | np.ndarray, props: dict, out_path: str | Path | None = None,
                     save_probabilities: bool = False, resampling: Resampling | None = None,
                     region_order: Sequence[int] | None = None) -> np.ndarray:
    """The label map (argmax, uint8, raw shape) of ``probs`` (at the target spacing) in the raw geometry;
    written to ``out_path`` (atomically, format by ending) when given, with the probabilities (float16, key
    ``probabilities``, ``(n_classes, *raw shape)``) in ``<out_path without ending>.npz`` when
    ``save_probabilities``. ``resampling``: the configuration's plan entry (``config.resampling``), whose orders
    resample the probabilities back (None: :data:`PLANNER_DEFAULT_RESAMPLING`). One configuration's
    :func:`export_prediction`."""
    return export_prediction([(probs, props)], out_path, props["geometry"], save_probabilities,
                             resampling=resampling, region_order=region_order)
