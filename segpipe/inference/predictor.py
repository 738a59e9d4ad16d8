"""Prediction from Python: :class:`Predictor` loads a trained data set's models once and predicts numpy arrays,
SimpleITK images, files and folders.

Arrays are channels first, ``(c, z, y, x)`` for 3D and ``(c, y, x)`` for 2D (a single-channel image may leave
the channel axis out); spacing is in mm in the same array axis order; origin (mm) and direction (flattened
row-major cosine matrix) follow SimpleITK's ``(x, y, z)`` order. Results are label maps of the image's shape,
``uint8`` with the data set's class values (an ``ignore`` label is never predicted).

Example (a model trained in ``ws/hippo``)::

    from segpipe import Predictor
    predictor = Predictor("ws", "hippo", device="cpu", mirror=False)
    label = predictor.predict_array(image, spacing=(1.0, 1.0, 1.0))   # image: (z, y, x) float
    predictor.predict_file("case_0000.nii.gz", "out/case.nii.gz")      # one file per channel, or a list
    predictor.predict_folder("images/", "predictions/")                # as `segpipe predict`
    result = predictor.predict_array(image, (1.0, 1.0, 1.0), uncertainty=True)
    result.label, result.entropy, result.mutual_information, result.score   # as `segpipe predict --uncertainty`

docs/api.md runs these examples as tests.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import SimpleITK as sitk
import torch

from segpipe.dataset.model import CaseEntry
from segpipe.dataset.reading import read_channels
from segpipe.dataset.store import load_dataset
from segpipe.devices import autocast_dtype, pick_device
from segpipe.errors import fail
from segpipe.inference.export import export_prediction
from segpipe.inference.inputs import apply_spacing, input_spec
from segpipe.inference.models import chosen_models, load_models
from segpipe.inference.predict import case_probabilities, predict_folder
from segpipe.inference.predictors import DEFAULT_PREDICTOR, check_predictor
from segpipe.inference.uncertainty import CaseUncertainty, case_uncertainty, uncertainty_paths
from segpipe.io.images import Geometry, geometry_of, write_image
from segpipe.preprocessing.case import preprocess_case
from segpipe.workspace import Workspace

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class UncertainPrediction(CaseUncertainty):
    """A label map with its uncertainty, as ``segpipe predict --uncertainty`` computes it
    (:mod:`segpipe.inference.uncertainty`): ``label`` (``uint8``) besides :class:`CaseUncertainty`'s ``entropy``
    and ``mutual_information`` (float32, nats, the label map's shape), ``scores`` (the case's entry of
    ``uncertainty.json``: ``score``, the region's and the whole image's mean entropy and mutual information, ...)
    and ``score``."""

    label: np.ndarray


class Predictor:
    """The trained models of data set ``name`` in ``workspace``, loaded once.

    Args:
        workspace: the workspace folder (``segpipe --workspace``).
        name: the data set (default: the workspace's only one).
        configs: configurations to ensemble (default: the plan's default configuration).
        folds: folds to use (default: every trained fold of each configuration).
        best: use ``segpipe select``'s choice (configurations, folds, post-processing) instead.
        checkpoint: ``final``, ``best`` or ``latest``.
        device: ``auto``, ``cpu`` or ``cuda``; precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (see
            :mod:`segpipe.devices`).
        mirror: mirroring test-time augmentation (nnU-Net's default; 4x (2D) or 8x (3D) the network work).
        step: sliding-window step as a fraction of the patch (0.5: windows overlap by half).
        predictor: the registered predictor (:mod:`segpipe.inference.predictors`; plug-ins add theirs), as
            ``segpipe predict --predictor``.
    """

    def __init__(self, workspace: PathLike, name: str | None = None, configs: Sequence[str] | None = None,
                 folds: Sequence[int | str] | None = None, best: bool = False, checkpoint: str = "final",
                 device: str = "auto", precision: str = "auto", mirror: bool = True, step: float = 0.5,
                 predictor: str = DEFAULT_PREDICTOR):
        if not 0 < step <= 1:
            raise fail(f"step {step} is not in (0, 1]", "give the window step as a fraction of the patch, e.g. 0.5")
        self.predictor = check_predictor(predictor)
        self.workspace = Workspace.locate(str(workspace), name).require_dataset()
        self.spec = load_dataset(self.workspace)
        cfgs, fs, self.postprocess = chosen_models(self.workspace, list(configs) if configs else None,
                                                   [str(f) for f in folds] if folds else None, best)
        self.device = pick_device(device)
        self.amp_dtype = autocast_dtype(self.device, precision)
        self.models = load_models(self.workspace, cfgs, fs, checkpoint, self.device, self.predictor)
        self.mirror, self.step = mirror, step

    @property
    def classes(self) -> dict[str, Any]:
        """The predicted classes, ``{name: value}`` (background 0); a region's value is the tuple of label
        values it is made of (region-based models)."""
        return self.spec.classes

    @overload
    def predict_array(self, image: np.ndarray, spacing: Sequence[float], origin: Sequence[float] | None = ...,
                      direction: Sequence[float] | None = ..., uncertainty: Literal[False] = ...) -> np.ndarray: ...

    @overload
    def predict_array(self, image: np.ndarray, spacing: Sequence[float], origin: Sequence[float] | None = ...,
                      direction: Sequence[float] | None = ..., *, uncertainty: Literal[True]
                      ) -> UncertainPrediction: ...

    def predict_array(self, image: np.ndarray, spacing: Sequence[float], origin: Sequence[float] | None = None,
                      direction: Sequence[float] | None = None, uncertainty: bool = False
                      ) -> np.ndarray | UncertainPrediction:
        """The label map (``uint8``, the image's spatial shape) of ``image`` ``(c, *spatial)`` or, with one channel,
        ``(*spatial)``; ``spacing`` in mm per spatial axis, array order. With ``uncertainty``, an
        :class:`UncertainPrediction`: the label map with its entropy and mutual-information maps and scores."""
        data = np.asarray(image, dtype=np.float32)
        ndim = len(spacing)
        if ndim not in (2, 3):
            raise fail(f"spacing {tuple(spacing)} has {ndim} values", "give one spacing (mm) per spatial axis, "
                       "in array order: (z, y, x) for 3D, (y, x) for 2D")
        if data.ndim == ndim:
            data = data[None]
        if data.ndim != ndim + 1 or data.shape[0] != self.spec.n_channels:
            raise fail(f"image of shape {data.shape} with a {ndim}D spacing", f"give ({self.spec.n_channels}, "
                       f"*spatial) channels first ({list(self.spec.channels.values())}), or the spatial array alone "
                       "for a one-channel model")
        geo = Geometry(tuple(int(n) for n in data.shape[1:]), tuple(float(s) for s in spacing),
                       tuple(float(o) for o in origin) if origin is not None else (0.0,) * ndim,
                       tuple(float(d) for d in direction) if direction is not None
                       else tuple(np.eye(ndim).ravel().tolist()))
        return self._predict(data, geo, uncertainty)

    def predict_image(self, image: sitk.Image | Sequence[sitk.Image]) -> sitk.Image:
        """The label map of a SimpleITK image (one per channel, same grid), as a SimpleITK image on its grid."""
        images = [image] if isinstance(image, sitk.Image) else list(image)
        if len(images) != self.spec.n_channels:
            raise fail(f"{len(images)} image(s) given, the model expects {self.spec.n_channels}",
                       f"give one SimpleITK image per channel: {list(self.spec.channels.values())}")
        if any(i.GetNumberOfComponentsPerPixel() != 1 for i in images):
            raise fail("a multi-component (e.g. RGB) image", "give one grey-value image per channel")
        if any(i.GetSize() != images[0].GetSize() or i.GetSpacing() != images[0].GetSpacing() for i in images):
            raise fail("the channel images are not on one grid (size or spacing differ)",
                       "resample the channels onto one grid first")
        data = np.stack([sitk.GetArrayFromImage(i).astype(np.float32) for i in images])
        geo = geometry_of(images[0])
        label = self._predict(data, geo)
        out = sitk.GetImageFromArray(label)
        out.CopyInformation(images[0])
        return out

    @overload
    def predict_file(self, paths: PathLike | Sequence[PathLike], output: PathLike | None = ...,
                     pixel_spacing: float | None = ..., spacing_csv: PathLike | None = ...,
                     uncertainty: Literal[False] = ...) -> np.ndarray: ...

    @overload
    def predict_file(self, paths: PathLike | Sequence[PathLike], output: PathLike | None = ...,
                     pixel_spacing: float | None = ..., spacing_csv: PathLike | None = ..., *,
                     uncertainty: Literal[True]) -> UncertainPrediction: ...

    def predict_file(self, paths: PathLike | Sequence[PathLike], output: PathLike | None = None,
                     pixel_spacing: float | None = None, spacing_csv: PathLike | None = None,
                     uncertainty: bool = False) -> np.ndarray | UncertainPrediction:
        """The label map of one case's image file(s): one file per channel in the data set's channel order (or
        one 4D file for a data set stored that way), read exactly as ``segpipe predict`` reads its inputs
        (channel geometries compared, grey images stored as RGB accepted, 2D images given their pixel size in mm by
        ``pixel_spacing`` or ``spacing_csv``). Written to ``output`` (format by ending, the input's header
        geometry) when given. With ``uncertainty``, an :class:`UncertainPrediction` (its maps written next to
        ``output`` as ``segpipe predict --uncertainty`` names them, when ``output`` is given)."""
        files = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
        files = [f.expanduser().absolute() for f in files]
        root = Path(os.path.commonpath([str(f.parent) for f in files]))
        case = CaseEntry(files[0].name.split(".")[0] or "input", [f.relative_to(root).as_posix() for f in files])
        expected = 1 if self.spec.channels_in_file else self.spec.n_channels
        if len(files) != expected:
            raise fail(f"{len(files)} file(s) given, the model expects {expected}",
                       f"give one file per channel: {list(self.spec.channels.values())}" if expected > 1 else
                       "give the case's one image file", file=files[0])
        apply_spacing(root, [case], pixel_spacing, Path(spacing_csv) if spacing_csv else None)
        data, geo = read_channels(input_spec(self.spec, root, [case]), root, case)
        if data.shape[0] != self.spec.n_channels:
            raise fail(f"the image has {data.shape[0]} channel(s), the model expects {self.spec.n_channels}",
                       "give the same channels as in training", file=files[0])
        result = self._predict(data, geo, uncertainty)
        if output is not None:
            label = result.label if isinstance(result, UncertainPrediction) else result
            write_image(label, geo.as_in_file(), output)
            if isinstance(result, UncertainPrediction):
                for volume, path in zip((result.entropy, result.mutual_information), uncertainty_paths(Path(output))):
                    write_image(volume, geo.as_in_file(), path)
        return result

    def predict_folder(self, input_dir: PathLike, output_dir: PathLike, workers: int = 1,
                       save_probabilities: bool = False, pixel_spacing: float | None = None,
                       spacing_csv: PathLike | None = None, uncertainty: bool = False) -> list[str]:
        """Every case of ``input_dir`` into ``output_dir``, as ``segpipe predict`` reads and writes them (no
        record or lock of the workspace); returns the written label maps. 2D images without a pixel size (PNG,
        ...) need ``pixel_spacing`` (mm) or ``spacing_csv``, as ``segpipe predict`` does. ``uncertainty``: also
        each case's entropy and mutual-information maps and ``uncertainty.json``, as ``--uncertainty``."""
        check_predictor(self.predictor, uncertainty)
        return predict_folder(self.spec, self.models, Path(input_dir), Path(output_dir), self.device,
                              mirror=self.mirror, save_probabilities=save_probabilities,
                              postprocess=self.postprocess, workers=workers, amp_dtype=self.amp_dtype,
                              pixel_spacing=pixel_spacing, spacing_csv=Path(spacing_csv) if spacing_csv else None,
                              step=self.step, uncertainty=uncertainty)

    @overload
    def _predict(self, data: np.ndarray, geo: Geometry, uncertainty: Literal[False] = ...) -> np.ndarray: ...

    @overload
    def _predict(self, data: np.ndarray, geo: Geometry, uncertainty: bool) -> np.ndarray | UncertainPrediction: ...

    def _predict(self, data: np.ndarray, geo: Geometry, uncertainty: bool = False
                 ) -> np.ndarray | UncertainPrediction:
        """The label map of one case in its raw geometry (with ``uncertainty``, an :class:`UncertainPrediction`,
        computed as ``segpipe predict --uncertainty`` computes it)."""
        if uncertainty:
            check_predictor(self.predictor, uncertainty=True)
        configs = [m.config for m in self.models] + [m.previous.config for m in self.models if m.previous]
        prepared = []
        for cfg in configs:
            pdata, _, props = preprocess_case(data, None, geo, cfg, case_id="input")
            prepared.append((pdata, props))
        expected: list[torch.Tensor] | None = [] if uncertainty else None
        with torch.inference_mode():
            parts = list(case_probabilities(self.models, prepared, self.spec.n_outputs, self.mirror, self.device,
                                            amp_dtype=self.amp_dtype, step=self.step,
                                            region_order=self.spec.region_order, entropy_out=expected))
        resampling = [m.config.resampling for m in self.models]
        label = export_prediction(parts, None, geo, postprocess=self.postprocess, labels=self.spec.classes,
                                  resampling=resampling, region_order=self.spec.region_order)
        label = np.asarray(label).astype(np.uint8, copy=False)
        if expected is None:
            return label
        u = case_uncertainty(parts, expected, label, resampling, regions=self.spec.region_order is not None)
        return UncertainPrediction(u.entropy, u.mutual_information, u.scores, label=label)
