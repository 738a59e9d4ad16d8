"""The plans contract: plans.json as frozen, typed objects, parsed and validated once when the file is read.

``segpipe plan`` writes plans.json (through :func:`Plans.from_json` first, so a written plan is always a valid one);
preprocess, train, predict and select read it with :func:`load_plans` and use :class:`Plans`,
:class:`Configuration`, :class:`NetworkPlan` and :class:`Topology` instead of raw dicts. A missing or malformed
key is an error naming the file, the key and the fix (re-run ``segpipe plan``); nothing falls back to a
constant. Keys this segpipe does not know are kept (``extra``) and written back unchanged, so a plug-in's
additions survive a round trip.

Axis order and units follow :mod:`segpipe.axes`: per-axis values in array order ``(z, y, x)`` / ``(y, x)``,
spacing in mm, sizes in voxels.

Layout of one configuration entry (``plans["configurations"][name]``)::

    spacing, median_shape, patch_size, batch_size, batch_dice, data_identifier, trainer,
    network {name, n_stages, features_per_stage, kernel_sizes, strides, n_conv_per_stage, n_conv_per_stage_decoder},
    normalization [{channel, scheme, use_mask, clip?, mean?, std?}, ...],
    resampling {image_order, label_order, label_mode, anisotropy_threshold, coarse_axis_order},
    memory {...}, why {choice: reason}
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segpipe.axes import MedianShapeVox, ShapeVox, SpacingMM, StridesVox
from segpipe.errors import SegpipeError, did_you_mean, fail
from segpipe.workspace import Workspace

PLAN_FIX = "re-run `segpipe plan --force` (or correct plans.json by hand)"
DEFAULT_TRAINER = "default"



class _Reader:
    """Reads typed values out of one JSON object, naming ``where`` (a key path in plans.json) on errors.

    Annotations say ``str`` etc.: inside this class body, ``str``, ``int``, ``float`` and ``bool`` name
    the reader's methods.
    """

    def __init__(self, obj: object, where: str, file: Path | None) -> None:
        if not isinstance(obj, Mapping):
            raise fail(f"{where} is {type(obj).__name__}, expected a JSON object", PLAN_FIX, file=file)
        self.obj: Mapping[str, Any] = obj
        self.where, self.file = where, file

    def _get(self, key: str) -> Any:
        if key not in self.obj:
            raise fail(f"{self.where} lacks '{key}' (plans.json from an older segpipe, or edited by hand)", PLAN_FIX,
                       file=self.file)
        return self.obj[key]

    def _bad(self, key: str, value: Any, want: str) -> SegpipeError:
        return fail(f"{self.where}.{key} is {value!r}, expected {want}", PLAN_FIX, file=self.file)

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value:
            raise self._bad(key, value, "a non-empty string")
        return value

    def integer(self, key: str, minimum: int | None = None) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            raise self._bad(key, value, "an integer" + (f" >= {minimum}" if minimum is not None else ""))
        return value

    def number(self, key: str, positive: bool = False) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and not value > 0):
            raise self._bad(key, value, "a positive number" if positive else "a number")
        return float(value)

    def flag(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self._bad(key, value, "true or false")
        return value

    def numbers(self, key: str, positive: bool = False) -> tuple[float, ...]:
        value = self._get(key)
        if (not isinstance(value, list) or not value
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
                or (positive and any(not v > 0 for v in value))):
            raise self._bad(key, value, "a list of " + ("positive " if positive else "") + "numbers")
        return tuple(float(v) for v in value)

    def integers(self, key: str, minimum: int = 1) -> tuple[int, ...]:
        value = self._get(key)
        if not _int_list(value, minimum):
            raise self._bad(key, value, f"a list of integers >= {minimum}")
        return tuple(value)

    def integer_lists(self, key: str, minimum: int = 1) -> tuple[tuple[int, ...], ...]:
        value = self._get(key)
        if not isinstance(value, list) or not value or not all(_int_list(v, minimum) for v in value):
            raise self._bad(key, value, f"a list of lists of integers >= {minimum}")
        return tuple(tuple(v) for v in value)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._get(key)
        if not isinstance(value, Mapping):
            raise self._bad(key, value, "a JSON object")
        return dict(value)

    def sub(self, key: str) -> _Reader:
        return _Reader(self._get(key), f"{self.where}.{key}", self.file)

    def extra(self, known: Sequence[str]) -> dict[str, Any]:
        return {k: v for k, v in self.obj.items() if k not in known}


def _int_list(value: object, minimum: int) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value))


@dataclass(frozen=True)
class Topology:
    """A U-Net topology (all per-axis tuples in array axis order, sizes in voxels).

    ``kernel_sizes[s]`` / ``strides[s]`` are the conv kernel and the stride of the first conv of encoder stage
    ``s`` (``strides[0]`` is all ones); ``n_conv_per_stage_decoder[i]`` is the number of convs of decoder stage
    ``i``, counted from the bottleneck upward (``i = 0`` is the coarsest decoder stage). This is the one
    topology type: the planner derives it (:func:`segpipe.planning.topology.derive_topology`), plans.json stores
    it, and network builders (:mod:`segpipe.networks.registry`) receive it.
    """

    n_stages: int
    features_per_stage: tuple[int, ...]
    kernel_sizes: tuple[StridesVox, ...]
    strides: tuple[StridesVox, ...]
    n_conv_per_stage: tuple[int, ...]
    n_conv_per_stage_decoder: tuple[int, ...]

    KEYS = ("n_stages", "features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage",
            "n_conv_per_stage_decoder")

    def __post_init__(self) -> None:
        self._check()

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return len(self.kernel_sizes[0])

    @property
    def total_stride(self) -> ShapeVox:
        """Per-axis product of all strides: input patches must be divisible by it (voxels)."""
        total = [1] * self.ndim
        for stride in self.strides:
            total = [t * s for t, s in zip(total, stride)]
        return tuple(total)

    @property
    def pools_per_axis(self) -> tuple[int, ...]:
        """How many stages downsample each axis."""
        return tuple(sum(1 for st in self.strides if st[a] > 1) for a in range(self.ndim))

    @classmethod
    def from_json(cls, obj: object, where: str = "network", file: Path | None = None) -> Topology:
        r = _Reader(obj, where, file)
        try:
            return cls(n_stages=r.integer("n_stages", 2), features_per_stage=r.integers("features_per_stage"),
                       kernel_sizes=r.integer_lists("kernel_sizes"), strides=r.integer_lists("strides"),
                       n_conv_per_stage=r.integers("n_conv_per_stage"),
                       n_conv_per_stage_decoder=r.integers("n_conv_per_stage_decoder"))
        except _TopologyError as e:
            raise fail(f"{where}: {e}", PLAN_FIX, file=file) from None

    def to_json(self) -> dict[str, Any]:
        return {"n_stages": self.n_stages, "features_per_stage": list(self.features_per_stage),
                "kernel_sizes": [list(k) for k in self.kernel_sizes], "strides": [list(s) for s in self.strides],
                "n_conv_per_stage": list(self.n_conv_per_stage),
                "n_conv_per_stage_decoder": list(self.n_conv_per_stage_decoder)}

    def _check(self) -> None:
        n = self.n_stages
        if n < 2:
            raise _TopologyError(f"n_stages {n}; a U-Net needs at least 2")
        lengths = {"features_per_stage": len(self.features_per_stage), "kernel_sizes": len(self.kernel_sizes),
                   "strides": len(self.strides), "n_conv_per_stage": len(self.n_conv_per_stage)}
        if any(v != n for v in lengths.values()) or len(self.n_conv_per_stage_decoder) != n - 1:
            raise _TopologyError(f"lists have wrong lengths for n_stages={n}: {lengths}, n_conv_per_stage_decoder="
                                 f"{len(self.n_conv_per_stage_decoder)} (needs {n - 1})")
        ndims = {len(v) for v in (*self.kernel_sizes, *self.strides)}
        if len(ndims) != 1 or ndims.pop() not in (2, 3):
            raise _TopologyError("kernel_sizes/strides mix or use unsupported dimensions (each entry needs 2 "
                                 "values for 2D or 3 for 3D)")
        if any(s != 1 for s in self.strides[0]):
            raise _TopologyError(f"strides[0] = {list(self.strides[0])}; the first stage must not downsample")
        if any(k < 1 or k % 2 == 0 for ks in self.kernel_sizes for k in ks):
            raise _TopologyError(f"kernel sizes {[list(k) for k in self.kernel_sizes]}; each must be odd and "
                                 "positive")
        if any(v < 1 for v in (*self.features_per_stage, *self.n_conv_per_stage, *self.n_conv_per_stage_decoder,
                               *(s for st in self.strides for s in st))):
            raise _TopologyError("a feature count, conv count or stride is below 1")


class _TopologyError(ValueError):
    """An inconsistent topology (raised by Topology's own checks; turned into a SegpipeError naming the file)."""


@dataclass(frozen=True)
class NetworkPlan:
    """A configuration's network: the registered builder's ``name`` (:mod:`segpipe.networks.registry`) and the
    topology it builds. JSON: one flat object (``name`` beside the topology keys)."""

    name: str
    topology: Topology
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: object, where: str = "network", file: Path | None = None) -> NetworkPlan:
        r = _Reader(obj, where, file)
        return cls(name=r.text("name"), topology=Topology.from_json(obj, where, file),
                   extra=r.extra(("name", *Topology.KEYS)))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, **self.topology.to_json(), **self.extra}


@dataclass(frozen=True)
class ChannelNormalization:
    """How one input channel is normalized: ``scheme`` names a registered normalizer
    (:data:`segpipe.preprocessing.normalization.NORMALIZERS`); ``clip`` (intensity units of the image, low and
    high), ``mean`` and ``std`` are data-set statistics for schemes that use them (``ct``); ``use_mask`` restricts
    statistics to the nonzero mask. Scheme-specific keys of plug-ins are kept in ``extra``."""

    channel: str
    scheme: str
    use_mask: bool
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: object, where: str, file: Path | None = None) -> ChannelNormalization:
        r = _Reader(obj, where, file)
        clip = None
        if "clip" in r.obj:
            lo_hi = r.numbers("clip")
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise r._bad("clip", list(lo_hi), "[low, high] with low <= high")
            clip = (lo_hi[0], lo_hi[1])
        return cls(channel=r.text("channel"), scheme=r.text("scheme"), use_mask=r.flag("use_mask"), clip=clip,
                   mean=r.number("mean") if "mean" in r.obj else None,
                   std=r.number("std") if "std" in r.obj else None,
                   extra=r.extra(("channel", "scheme", "use_mask", "clip", "mean", "std")))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"channel": self.channel, "scheme": self.scheme}
        if self.clip is not None:
            out["clip"] = list(self.clip)
        if self.mean is not None:
            out["mean"] = self.mean
        if self.std is not None:
            out["std"] = self.std
        out["use_mask"] = self.use_mask
        return {**out, **self.extra}


@dataclass(frozen=True)
class Resampling:
    """Spline orders for images and labels (labels resampled ``label_mode`` "one-hot"), and the anisotropy rule:
    where a case's coarsest axis is more than ``anisotropy_threshold`` x the others, it is resampled separately
    with order ``coarse_axis_order``."""

    image_order: int
    label_order: int
    label_mode: str
    anisotropy_threshold: float
    coarse_axis_order: int

    @classmethod
    def from_json(cls, obj: object, where: str, file: Path | None = None) -> Resampling:
        r = _Reader(obj, where, file)
        out = cls(image_order=r.integer("image_order", 0), label_order=r.integer("label_order", 0),
                  label_mode=r.text("label_mode"), anisotropy_threshold=r.number("anisotropy_threshold", True),
                  coarse_axis_order=r.integer("coarse_axis_order", 0))
        if out.label_mode != "one-hot":
            raise r._bad("label_mode", out.label_mode, '"one-hot" (the only label resampling segpipe implements)')
        return out

    def to_json(self) -> dict[str, Any]:
        return {"image_order": self.image_order, "label_order": self.label_order, "label_mode": self.label_mode,
                "anisotropy_threshold": self.anisotropy_threshold, "coarse_axis_order": self.coarse_axis_order}


@dataclass(frozen=True)
class Configuration:
    """One planned configuration (2d, 3d_fullres, 3d_lowres, a budget's choice): what preprocess, train and
    predict do with it. ``spacing`` (mm) and ``patch_size`` (voxels) are in array axis order, 2 values for 2D
    configurations (the in-plane axes ``(y, x)``) and 3 for 3D; ``trainer`` names a registered trainer
    (:data:`segpipe.training.trainer.TRAINERS`). ``memory`` and ``why`` are the planner's figures and reasons.

    ``data_identifier`` names the preprocessed data the configuration trains on
    (``preprocessed/<data_identifier>/``): configurations that preprocess alike share it (the cascade's fullres
    stage uses 3d_fullres's data). ``previous_stage`` makes a cascade stage: the named configuration's
    segmentation (its cross-validation predictions in training, its prediction at inference) is given to the
    network as one-hot input channels, one per foreground label, after the image channels."""

    name: str
    data_identifier: str
    spacing: SpacingMM
    median_shape: MedianShapeVox
    patch_size: ShapeVox
    batch_size: int
    batch_dice: bool
    trainer: str
    network: NetworkPlan
    normalization: tuple[ChannelNormalization, ...]
    resampling: Resampling
    memory: Mapping[str, Any] = field(default_factory=dict)
    why: Mapping[str, str] = field(default_factory=dict)
    previous_stage: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    KEYS = ("spacing", "median_shape", "patch_size", "batch_size", "batch_dice", "data_identifier", "trainer",
            "network", "normalization", "resampling", "memory", "why", "previous_stage")

    @property
    def ndim(self) -> int:
        """2 for 2d configurations, 3 for 3D ones."""
        return len(self.patch_size)

    @classmethod
    def from_json(cls, name: str, obj: object, file: Path | None = None) -> Configuration:
        where = f"configurations.{name}"
        r = _Reader(obj, where, file)
        norm = r._get("normalization")
        if not isinstance(norm, list) or not norm:
            raise r._bad("normalization", norm, "a list with one entry per input channel")
        cfg = cls(name=name, data_identifier=r.text("data_identifier"), spacing=r.numbers("spacing", positive=True),
                  median_shape=r.numbers("median_shape", positive=True), patch_size=r.integers("patch_size"),
                  batch_size=r.integer("batch_size", 1), batch_dice=r.flag("batch_dice"), trainer=r.text("trainer"),
                  network=NetworkPlan.from_json(r._get("network"), f"{where}.network", file),
                  normalization=tuple(ChannelNormalization.from_json(n, f"{where}.normalization[{i}]", file)
                                      for i, n in enumerate(norm)),
                  resampling=Resampling.from_json(r._get("resampling"), f"{where}.resampling", file),
                  memory=r.mapping("memory"), why={str(k): str(v) for k, v in r.mapping("why").items()},
                  previous_stage=r.text("previous_stage") if r.obj.get("previous_stage") is not None else None,
                  extra=r.extra(cls.KEYS))
        cfg._check(file)
        return cfg

    def preprocessing_key(self) -> dict[str, Any]:
        """What the preprocessed data depends on (its hash ties preprocessed cases to the plan): the data
        identifier, target spacing, normalization and resampling; not the patch, batch or network."""
        return {"data_identifier": self.data_identifier, "spacing": list(self.spacing),
                "normalization": [n.to_json() for n in self.normalization], "resampling": self.resampling.to_json()}

    def _check(self, file: Path | None) -> None:
        where = f"configurations.{self.name}"
        dim = len(self.patch_size)
        if dim not in (2, 3) or len(self.spacing) != dim or len(self.median_shape) != dim:
            raise fail(f"{where}: spacing {list(self.spacing)}, median_shape {list(self.median_shape)} and "
                       f"patch_size {list(self.patch_size)} need the same 2 or 3 axes", PLAN_FIX, file=file)
        topo = self.network.topology
        if topo.ndim != dim:
            raise fail(f"{where}: the network is {topo.ndim}D but patch_size {list(self.patch_size)} is {dim}D",
                       PLAN_FIX, file=file)
        off = [p for p, d in zip(self.patch_size, topo.total_stride) if p % d]
        if off:
            raise fail(f"{where}: patch_size {list(self.patch_size)} is not divisible by the network's total "
                       f"stride {list(topo.total_stride)}", PLAN_FIX, file=file)

    def to_json(self) -> dict[str, Any]:
        """The plans.json entry (without the name, which is its key)."""
        return {"spacing": list(self.spacing), "median_shape": list(self.median_shape),
                "patch_size": list(self.patch_size), "batch_size": self.batch_size, "network": self.network.to_json(),
                "memory": dict(self.memory), "why": dict(self.why), "batch_dice": self.batch_dice,
                "data_identifier": self.data_identifier, "trainer": self.trainer,
                "normalization": [n.to_json() for n in self.normalization], "resampling": self.resampling.to_json(),
                **({"previous_stage": self.previous_stage} if self.previous_stage is not None else {}),
                **self.extra}


@dataclass(frozen=True)
class Plans:
    """plans.json: the data set's configurations and what the planner assumed. ``labels`` is dataset.json's
    ``{name: value}`` (a region's value is a list of values); ``full_resolution_spacing`` (mm) and
    ``median_shape_at_full_resolution`` (voxels) are in
    array axis order; ``budget`` is the budget planner's record (None without ``--budget``)."""

    dataset: str
    planner: str
    axis_order: str
    memory_budget: Mapping[str, Any]
    n_channels: int
    labels: Mapping[str, int | list[int]]
    full_resolution_spacing: SpacingMM
    median_shape_at_full_resolution: MedianShapeVox
    configurations: Mapping[str, Configuration]
    default_configuration: str
    notes: tuple[str, ...] = ()
    budget: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    file: Path | None = field(default=None, compare=False)

    KEYS = ("dataset", "planner", "axis_order", "memory_budget", "n_channels", "labels", "full_resolution_spacing",
            "median_shape_at_full_resolution", "configurations", "default_configuration", "notes", "budget",
            "schema_version", "kind")

    @classmethod
    def from_json(cls, obj: object, file: Path | None = None) -> Plans:
        """Parse and validate a plans.json document (raises :class:`SegpipeError` naming ``file`` and the key)."""
        r = _Reader(obj, "plans", file)
        configs_raw = r.mapping("configurations")
        if not configs_raw:
            raise r._bad("configurations", configs_raw, "at least one configuration")
        configs = {name: Configuration.from_json(name, c, file) for name, c in configs_raw.items()}
        labels = r.mapping("labels")
        def _int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not all(_int(v) or (isinstance(v, list) and v and all(_int(x) for x in v)) for v in labels.values()):
            raise r._bad("labels", labels, "{name: integer value or region (list of integer values)}")
        notes = r._get("notes")
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise r._bad("notes", notes, "a list of strings")
        budget = r.obj.get("budget")
        if budget is not None and not isinstance(budget, Mapping):
            raise r._bad("budget", budget, "a JSON object")
        plans = cls(dataset=r.text("dataset"), planner=r.text("planner"), axis_order=r.text("axis_order"),
                    memory_budget=r.mapping("memory_budget"), n_channels=r.integer("n_channels", 1), labels=labels,
                    full_resolution_spacing=r.numbers("full_resolution_spacing", positive=True),
                    median_shape_at_full_resolution=r.numbers("median_shape_at_full_resolution", positive=True),
                    configurations=configs, default_configuration=r.text("default_configuration"),
                    notes=tuple(notes), budget=dict(budget) if budget is not None else None,
                    extra=r.extra(cls.KEYS), file=file)
        if plans.default_configuration not in configs:
            raise fail(f"plans.default_configuration '{plans.default_configuration}' is not one of the planned "
                       f"configurations {list(configs)}", PLAN_FIX, file=file)
        for c in configs.values():
            if len(c.normalization) != plans.n_channels:
                raise fail(f"configurations.{c.name} normalizes {len(c.normalization)} channel(s), the data set "
                           f"has {plans.n_channels}", PLAN_FIX, file=file)
            prev = configs.get(c.previous_stage) if c.previous_stage is not None else None
            if c.previous_stage is not None and (prev is None or prev.ndim != c.ndim or prev.name == c.name
                                                 or prev.previous_stage is not None):
                raise fail(f"configurations.{c.name}.previous_stage '{c.previous_stage}' must name another planned "
                           f"{c.ndim}D configuration that is not itself a cascade stage", PLAN_FIX, file=file)
        by_data: dict[str, Configuration] = {}
        for c in configs.values():
            other = by_data.setdefault(c.data_identifier, c)
            if other.preprocessing_key() != c.preprocessing_key():
                raise fail(f"configurations {other.name} and {c.name} share data_identifier '{c.data_identifier}' but "
                           "preprocess differently (spacing, normalization or resampling)", PLAN_FIX, file=file)
        return plans

    def cascade_stages(self) -> dict[str, str]:
        """``{cascade configuration: its previous stage}``."""
        return {n: c.previous_stage for n, c in self.configurations.items() if c.previous_stage is not None}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dataset": self.dataset, "planner": self.planner, "axis_order": self.axis_order,
            "memory_budget": dict(self.memory_budget), "n_channels": self.n_channels, "labels": dict(self.labels),
            "full_resolution_spacing": list(self.full_resolution_spacing),
            "median_shape_at_full_resolution": list(self.median_shape_at_full_resolution),
            "configurations": {n: c.to_json() for n, c in self.configurations.items()}, "notes": list(self.notes),
            "default_configuration": self.default_configuration}
        if self.budget is not None:
            out["budget"] = dict(self.budget)
        return {**out, **self.extra}

    def configuration(self, name: str | None = None) -> Configuration:
        """The configuration called ``name`` (default: :attr:`default_configuration`); an unknown name is a user
        error with a did-you-mean hint."""
        name = name or self.default_configuration
        if name not in self.configurations:
            known = list(self.configurations)
            raise fail(f"unknown configuration '{name}'{did_you_mean(name, known)}; this plan has {known}",
                       f"choose one of {known} with --config", file=self.file)
        return self.configurations[name]


def load_plans(ws: Workspace) -> Plans:
    """The workspace's plans.json, parsed and validated."""
    return read_plans(ws.plans_json)


def read_plans(path: str | Path) -> Plans:
    """Read and validate plans.json at ``path``."""
    from segpipe.io.jsonio import read_json

    path = Path(path)
    return Plans.from_json(read_json(path, kind="plans"), file=path)
