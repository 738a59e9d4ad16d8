"""Medical image I/O through SimpleITK (NIfTI, NRRD, MHA, PNG, TIFF, ...).

Arrays come back in numpy axis order as ``SimpleITK.GetArrayFromImage`` gives them: ``(z, y, x)`` for 3D and
``(y, x)`` for 2D. :class:`Geometry` stores the spacing in that same array axis order (millimetres), while the
origin and the direction cosines stay in SimpleITK's physical ``(x, y, z)`` order, exactly as in the file.
"""
from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypedDict

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from segpipe.axes import ShapeVox, SpacingMM
from segpipe.errors import fail
from segpipe.io.atomic import atomic_path

log = logging.getLogger(__name__)

SPACING_TOLERANCE_MM = 1e-3
ORIGIN_TOLERANCE_MM = 1e-3
DIRECTION_TOLERANCE = 1e-3

NIFTI_ENDINGS = (".nii.gz", ".nii")
IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".tif", ".tiff",
                 ".bmp", ".jpg", ".jpeg")
ENDINGS_2D = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")


class _SitkImage(Protocol):
    """The methods of ``SimpleITK.Image`` used here, typed (SimpleITK's SWIG-generated methods are unannotated).

    Sizes, spacings and origins are in SimpleITK's physical ``(x, y, z)`` order."""

    def GetSize(self) -> tuple[int, ...]: ...
    def GetSpacing(self) -> tuple[float, ...]: ...
    def GetOrigin(self) -> tuple[float, ...]: ...
    def GetDirection(self) -> tuple[float, ...]: ...
    def GetDimension(self) -> int: ...
    def GetNumberOfComponentsPerPixel(self) -> int: ...
    def SetSpacing(self, spacing: tuple[float, ...]) -> None: ...
    def SetOrigin(self, origin: tuple[float, ...]) -> None: ...
    def SetDirection(self, direction: tuple[float, ...]) -> None: ...


class _SitkReader(Protocol):
    """The methods of ``SimpleITK.ImageFileReader`` used here, typed."""

    def SetFileName(self, fn: str) -> None: ...
    def ReadImageInformation(self) -> None: ...
    def GetSize(self) -> tuple[int, ...]: ...


def _new_reader() -> _SitkReader:
    reader: type[_SitkReader] = sitk.ImageFileReader  # an unannotated SWIG class; typed through the Protocol
    return reader()


class GeometryDict(TypedDict):
    """:meth:`Geometry.to_dict`'s JSON form."""

    shape: list[int]
    spacing: list[float]
    origin: list[float]
    direction: list[float]


def file_ending(path: str | os.PathLike[str]) -> str:
    """The file's image ending (``.nii.gz`` counts as one ending); lower case; '' when not an image ending."""
    name = Path(path).name.lower()
    for end in IMAGE_ENDINGS:
        if name.endswith(end):
            return end
    return ""


@dataclass
class Geometry:
    """Where an image's voxels lie in physical space.

    ``shape`` and ``spacing`` follow the array axis order (``(z, y, x)`` / ``(y, x)``); spacing in mm.
    ``origin`` (mm) and ``direction`` (row-major cosine matrix, flattened) follow SimpleITK's ``(x, y, z)``.
    """

    shape: ShapeVox
    spacing: SpacingMM
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    extra: dict[str, int] = field(default_factory=dict)  # e.g. ``components``: values per pixel (RGB: 3)
    header_spacing: SpacingMM | None = None  # the file's own spacing when ``spacing`` was given by the user

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def to_dict(self) -> GeometryDict:
        return {"shape": list(self.shape), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Geometry:
        return cls(tuple(int(i) for i in d["shape"]), tuple(float(i) for i in d["spacing"]),
                   tuple(float(i) for i in d["origin"]), tuple(float(i) for i in d["direction"]))

    def with_spacing(self, spacing: SpacingMM) -> Geometry:
        """This geometry with ``spacing`` (mm) given by the user (``--spacing-csv``/``--pixel-spacing``); the
        file's own spacing is kept in ``header_spacing``."""
        return Geometry(self.shape, tuple(float(s) for s in spacing), self.origin, self.direction, dict(self.extra),
                        self.header_spacing if self.header_spacing is not None else self.spacing)

    def as_in_file(self) -> Geometry:
        """The geometry as the file's header has it (the user's spacing undone): what an output written for this
        image carries, so that it matches the image and its masks (PNG frames carry no pixel size)."""
        if self.header_spacing is None:
            return self
        return Geometry(self.shape, self.header_spacing, self.origin, self.direction, dict(self.extra))

    def mismatches(self, other: Geometry) -> list[str]:
        """Human-readable differences to ``other`` beyond the tolerances (empty list when they agree)."""
        out: list[str] = []
        if tuple(self.shape) != tuple(other.shape):
            out.append(f"shape {tuple(self.shape)} vs {tuple(other.shape)}")
            return out
        if not np.allclose(self.spacing, other.spacing, rtol=1e-4, atol=SPACING_TOLERANCE_MM):
            out.append(f"spacing {_fmt(self.spacing)} vs {_fmt(other.spacing)} mm")
        if not np.allclose(self.origin, other.origin, rtol=0, atol=ORIGIN_TOLERANCE_MM + 1e-4 * max(
                1.0, float(np.max(np.abs(self.origin))))):
            out.append(f"origin {_fmt(self.origin)} vs {_fmt(other.origin)} mm")
        if not np.allclose(self.direction, other.direction, rtol=0, atol=DIRECTION_TOLERANCE):
            out.append(f"direction {_fmt(self.direction)} vs {_fmt(other.direction)}")
        return out


def _fmt(v: Iterable[float]) -> str:
    return "(" + ", ".join(f"{float(x):.4g}" for x in v) + ")"


def read_sitk(path: str | os.PathLike[str]) -> sitk.Image:
    """Read an image with SimpleITK, turning failures into a user-facing error that names the file."""
    path = Path(path)
    if not path.exists():
        raise fail("file not found", "check the path, or re-run onboarding if files were moved", file=path)
    if path.stat().st_size == 0:
        raise fail("file is empty (0 bytes)", "replace it with a complete copy of the image", file=path)
    if not file_ending(path):
        raise fail(f"unsupported file ending '{''.join(path.suffixes)}'",
                   f"convert it to one of {', '.join(IMAGE_ENDINGS)}", file=path)
    if file_ending(path) in NIFTI_ENDINGS:
        _check_nifti_complete(path)
    if file_ending(path) == ".png" and _png_colour_type(path) == PNG_GREY_ALPHA:
        return _read_grey_alpha_png(path)  # ITK cannot read grey+alpha PNGs ("Unknown PixelType")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        msg = str(e).strip().splitlines()
        detail = next((m for m in msg if "rror" in m or "annot" in m), msg[-1] if msg else "")
        raise fail(f"cannot read image: corrupt, truncated or not the format its ending says "
                   f"({detail.strip()[:160]})", "replace it with an intact copy (try opening it in a viewer)",
                   file=path) from None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GREY_ALPHA = 4  # IHDR colour type of a grey+alpha ("LA") PNG


def _png_colour_type(path: Path) -> int | None:
    """The PNG's IHDR colour type (0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA), None when not a PNG."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)
    except OSError:
        return None
    if len(head) < 26 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[25]


def _read_grey_alpha_png(path: Path) -> sitk.Image:
    """A grey+alpha PNG as a 2-component (grey, alpha) SimpleITK image, spacing 1, origin 0 (as ITK reads PNGs).

    Read with Pillow (installed with matplotlib), since ITK refuses this pixel type. 16-bit grey+alpha is refused:
    Pillow would reduce it to 8 bits without saying so.
    """
    with open(path, "rb") as fh:
        bit_depth = fh.read(25)[24]
    if bit_depth != 8:
        raise fail(f"{bit_depth}-bit grey+alpha PNG, which segpipe cannot read without losing precision",
                   "save it as a grayscale PNG without an alpha channel (or as NIfTI)", file=path)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        raise fail("grey+alpha PNG: reading it needs the Pillow package", "pip install pillow, or save the image "
                   "as a grayscale PNG without an alpha channel", file=path) from None
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("LA") if im.mode != "LA" else im)
    except (OSError, ValueError, SyntaxError) as e:
        raise fail(f"cannot read image: corrupt or truncated grey+alpha PNG ({str(e)[:160]})",
                   "replace it with an intact copy (try opening it in a viewer)", file=path) from None
    return sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=True)


_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _check_nifti_complete(path: Path) -> None:
    """Refuse truncated NIfTI-1 files and NaN/Inf voxels, which ITK hides (it pads missing voxels and reads
    NaN as 0). Streams through the decompressed file once, without holding it in memory."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(352)
            if len(head) < 348:
                raise fail(f"cannot read image: only {len(head)} bytes, shorter than a NIfTI header",
                           "replace it with an intact copy", file=path)
            endian = next((e for e in "<>" if struct.unpack(e + "i", head[:4])[0] == 348), None)
            if endian is None:
                return  # not NIfTI-1 (e.g. NIfTI-2): left to ITK
            dims = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            vox_offset = int(struct.unpack(endian + "f", head[108:112])[0])
            n = int(np.prod([max(1, d) for d in dims[1:1 + max(0, min(7, dims[0]))]], dtype=np.int64))
            expected = vox_offset + n * bitpix // 8
            length, nonfinite = len(head), 0
            dtype = np.dtype(endian + _NIFTI_FLOATS[datatype]) if datatype in _NIFTI_FLOATS else None
            pending = head[vox_offset:] if len(head) > vox_offset else b""
            skip = max(0, vox_offset - len(head))
            while chunk := fh.read(1 << 22):
                length += len(chunk)
                if dtype is None:
                    continue
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                pending += chunk
                usable = len(pending) - len(pending) % dtype.itemsize
                vals = np.frombuffer(pending[:usable], dtype=dtype)
                nonfinite += int(vals.size - np.count_nonzero(np.isfinite(vals)))
                pending = pending[usable:]
            if dtype is not None and pending and len(pending) >= dtype.itemsize:
                vals = np.frombuffer(pending[: len(pending) - len(pending) % dtype.itemsize], dtype=dtype)
                nonfinite += int(vals.size - np.count_nonzero(np.isfinite(vals)))
    except gzip.BadGzipFile:
        raise fail("cannot read image: the file is not gzip-compressed, so it is not the format its ending says "
                   f"({''.join(path.suffixes)})", "give it the ending of its real format, or convert it",
                   file=path) from None
    except (EOFError, OSError, zlib.error) as e:
        raise fail(f"cannot read image: truncated or corrupt compressed file ({e})",
                   "replace it with an intact copy", file=path) from None
    if length < expected:
        raise fail(f"cannot read image: truncated ({length} of {expected} bytes)",
                   "replace it with an intact copy", file=path)
    if nonfinite:
        raise fail(f"{nonfinite} NaN/Inf intensity value(s) (ITK would silently read them as 0)",
                   "replace them (e.g. by 0 or the background value) or remove the case", file=path)


def geometry_of(img: _SitkImage) -> Geometry:
    """Geometry of a SimpleITK image, with shape and spacing in array axis order."""
    return Geometry(shape=tuple(int(s) for s in reversed(img.GetSize())),
                    spacing=tuple(float(s) for s in reversed(img.GetSpacing())),
                    origin=tuple(float(o) for o in img.GetOrigin()),
                    direction=tuple(float(d) for d in img.GetDirection()),
                    extra={"components": img.GetNumberOfComponentsPerPixel()})


def read_image(path: str | os.PathLike[str]) -> tuple[npt.NDArray[Any], Geometry]:
    """Read an image as ``(array, geometry)``.

    Array axis order is ``(z, y, x)`` (3D) or ``(y, x)`` (2D). Multi-component pixels (RGB PNGs) come back
    components first, ``(k, y, x)``, with ``geometry.extra['components'] == k``; the geometry describes the
    spatial axes only. A PNG's alpha channel is dropped (grey+alpha reads as grey, RGBA as RGB). 2D formats
    (PNG, TIFF, ...) holding a 3D stack (multi-page TIFF) are refused.
    """
    img = read_sitk(path)
    _refuse_stack_in_2d_format(img, Path(path))
    arr = sitk.GetArrayFromImage(img)
    geo = geometry_of(img)
    k = geo.extra["components"]  # = img.GetNumberOfComponentsPerPixel()
    if k in (2, 4) and file_ending(path) == ".png":
        arr = _drop_alpha(arr, Path(path))
        k -= 1
        geo.extra["components"] = k
    if k > 1:
        arr = np.moveaxis(arr, -1, 0)
    return arr, geo


def _refuse_stack_in_2d_format(img: _SitkImage, path: Path) -> None:
    """Refuse a 3D image in a file whose ending segpipe treats as 2D (a multi-page TIFF): it has no slice spacing,
    and 2D pixel sizes (``--spacing-csv``/``--pixel-spacing``) would be applied to a volume."""
    ending = file_ending(path)
    if ending not in ENDINGS_2D or img.GetDimension() <= 2:
        return
    size = img.GetSize()  # (x, y, pages, ...)
    pages = int(np.prod(size[2:]))
    raise fail(f"multi-page {ending} file: a 3D stack of {pages} pages of {size[1]}x{size[0]} pixels, but {ending} "
               "files are read as single 2D images",
               "convert the stack to a 3D format that stores the slice spacing (NIfTI .nii.gz or NRRD .nrrd), or "
               "save each page as its own 2D image", file=path)


def _drop_alpha(arr: npt.NDArray[Any], path: Path) -> npt.NDArray[Any]:
    """``arr`` (``(y, x, k)``, alpha last) without its alpha component; logs when alpha is not uniform."""
    alpha = arr[..., -1]
    if alpha.size and np.any(alpha != alpha.flat[0]):
        log.warning("%s: the alpha (transparency) channel varies; it is ignored, only the %s values are used",
                    path, "grey" if arr.shape[-1] == 2 else "colour")
    out = arr[..., :-1]
    return out[..., 0] if out.shape[-1] == 1 else out


def write_image(array: npt.NDArray[Any], geometry: Geometry, path: str | os.PathLike[str]) -> None:
    """Write ``array`` (array axis order, spatial axes only) with ``geometry``, atomically."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    header: _SitkImage = img
    if tuple(reversed(header.GetSize())) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match geometry shape {geometry.shape}")
    header.SetSpacing(tuple(float(s) for s in reversed(geometry.spacing)))
    header.SetOrigin(tuple(geometry.origin))
    header.SetDirection(tuple(geometry.direction))
    with atomic_path(path, verify=lambda tmp: verify_written_image(tmp, tuple(geometry.shape))) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)


def verify_written_image(path: Path, shape: ShapeVox) -> None:
    """Check a just-written image before it replaces anything: not empty, its header reads back with the
    expected ``shape`` (array axis order), and a NIfTI file holds all its voxels. SimpleITK's writer does not
    raise on a full disk; this does (:func:`segpipe.io.atomic.verification_failed`)."""
    from segpipe.errors import SegpipeError
    from segpipe.io.atomic import verification_failed, verify_not_empty

    verify_not_empty(path)
    try:
        reader = _new_reader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        got = tuple(int(s) for s in reversed(reader.GetSize()))
    except RuntimeError as e:
        raise verification_failed(path, f"header does not read back: {str(e).strip()[-120:]}") from None
    if got != tuple(shape):
        raise verification_failed(path, f"header says shape {got}, expected {tuple(shape)}")
    try:
        if file_ending(path) in NIFTI_ENDINGS:
            _check_nifti_complete(path)
        elif file_ending(path) in ENDINGS_2D:
            sitk.ReadImage(str(path))
    except (SegpipeError, RuntimeError) as e:
        raise verification_failed(path, f"does not read back: {str(e).strip()[-160:]}") from None
