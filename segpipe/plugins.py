"""Plug-ins: components of other packages, found through the entry-point group ``segpipe.plugins``.

A distribution declares, in its packaging metadata (pyproject.toml)::

    [project.entry-points."segpipe.plugins"]
    example = "my_package:register"

Each entry point is either a callable ``register(registry: PluginRegistry) -> None``, which registers its
components through the :class:`PluginRegistry` it is given, or a module whose import registers them (with the
ordinary decorators: ``@register_network``, ``@register_trainer``, ...). Entry points are loaded once per
process, the first time a registry is looked up (:func:`load_plugins`). A plug-in that fails to load is
reported (a logged warning naming the package, the entry point and the exception, kept in
:data:`LOAD_ERRORS`); its keys are just missing, and everything else keeps working.

Every registration is recorded with the distribution that provided it (:func:`provider`): ``segpipe`` and its
version for the in-tree components, the plug-in's package and version otherwise. Checkpoints store these
(:func:`provenance`), so that predicting with a model whose plug-in is missing names the package to install.
The contract is described in docs/plugins.md.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any, Generic, TypeVar

from segpipe._version import __version__

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "segpipe.plugins"

# kind -> (module, attribute) of its registry (a dict keyed by name); imported when first needed
REGISTRIES: dict[str, tuple[str, str]] = {
    "network": ("segpipe.networks.registry", "NETWORKS"),
    "trainer": ("segpipe.training.trainer", "TRAINERS"),
    "loss": ("segpipe.training.loss", "LOSSES"),
    "normalizer": ("segpipe.preprocessing.normalization", "NORMALIZERS"),
    "metric": ("segpipe.evaluation.metric_registry", "METRICS"),
    "predictor": ("segpipe.inference.predictors", "PREDICTORS"),
}
# importing these registers the in-tree entries of each kind (segpipe.networks imports the builders)
_IN_TREE_MODULES = {"network": "segpipe.networks", "trainer": "segpipe.training.trainers"}

T = TypeVar("T")


@dataclass(frozen=True)
class Provider:
    """The distribution that registered a component: ``package`` (its pip name) and ``version``; ``module`` is
    where the component is defined. ``version`` is None for code that is not an installed distribution (a
    script, a test module): such a component cannot be re-installed by name."""

    package: str
    version: str | None
    module: str = ""

    def to_json(self) -> dict[str, str | None]:
        return {"package": self.package, "version": self.version}

    def install_hint(self) -> str:
        """What to run (or do) to make the component available again."""
        if self.version is None:
            where = f" (module {self.module})" if self.module else ""
            return (f"import the code that registers it{where} before segpipe runs, or package it as a plug-in "
                    "(docs/plugins.md)")
        return f"pip install '{self.package}=={self.version}'"


SEGPIPE = Provider("segpipe", __version__, "segpipe")


@dataclass(frozen=True)
class LoadError:
    """A plug-in entry point that could not be loaded or whose ``register`` raised."""

    package: str
    version: str | None
    entry_point: str  # "name = value"
    error: str  # "ExceptionType: message"

    def describe(self) -> str:
        version = f" {self.version}" if self.version else ""
        return f"plug-in {self.package}{version}, entry point '{self.entry_point}': {self.error}"


PROVIDERS: dict[tuple[str, str], Provider] = {}  # (kind, name) -> who registered it
LOAD_ERRORS: list[LoadError] = []
_state = {"loaded": False}
_lock = threading.RLock()
_current: list[Provider] = []  # the plug-in being loaded (a stack: a plug-in may trigger the loading of none other)


def _entry_points() -> Iterable[metadata.EntryPoint]:
    """The installed entry points of :data:`ENTRY_POINT_GROUP` (a function, so that tests can replace it)."""
    return metadata.entry_points(group=ENTRY_POINT_GROUP)


def _distribution(ep: metadata.EntryPoint) -> tuple[str, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is not None:
        return str(dist.metadata["Name"] or ep.module), dist.version
    return ep.module.split(".")[0], None


def load_plugins(force: bool = False) -> list[LoadError]:
    """Load every ``segpipe.plugins`` entry point once per process (``force``: again, e.g. after installing
    one); returns the entry points that failed (also logged as warnings and kept in :data:`LOAD_ERRORS`).

    The in-tree registries are imported first, so that their entries are attributed to segpipe even when a
    plug-in is the first to import them."""
    with _lock:
        if _state["loaded"] and not force:
            return list(LOAD_ERRORS)
        _state["loaded"] = True  # before loading: a plug-in that looks a registry up does not recurse
        if force:
            LOAD_ERRORS.clear()
        for ep in sorted(_entry_points(), key=lambda e: (e.name, e.value)):
            package, version = _distribution(ep)
            provider = Provider(package, version, ep.module)
            _current.append(provider)
            try:
                target = ep.load()
                if not isinstance(target, ModuleType):
                    if not callable(target):
                        raise TypeError(f"{ep.value} is neither a module nor a callable register(registry)")
                    target(PluginRegistry(provider))
            except Exception as e:  # noqa: BLE001 - a broken plug-in must not break segpipe; it is reported
                err = LoadError(package, version, f"{ep.name} = {ep.value}", f"{type(e).__name__}: {e}")
                LOAD_ERRORS.append(err)
                log.warning("%s; its components are not available (fix or uninstall the package: "
                            "pip uninstall %s)", err.describe(), package)
            finally:
                _current.pop()
        return list(LOAD_ERRORS)


def registry(kind: str) -> Mapping[str, Any]:
    """The registry of ``kind`` (:data:`REGISTRIES`), with its in-tree entries and the plug-ins' loaded."""
    if kind not in REGISTRIES:
        raise ValueError(f"unknown registry kind '{kind}'; one of {sorted(REGISTRIES)}")
    module, attribute = REGISTRIES[kind]
    importlib.import_module(_IN_TREE_MODULES.get(kind, module))
    load_plugins()
    registered: Mapping[str, Any] = getattr(importlib.import_module(module), attribute)
    return registered


@functools.lru_cache(maxsize=1)
def _packages() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()


def _provider_of_module(module: str) -> Provider:
    top = module.split(".")[0]
    if top == "segpipe":
        return SEGPIPE
    if _current:
        return _current[-1]
    for name in _packages().get(top, []):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return Provider(name, metadata.version(name), module)
    return Provider(top or "unknown", None, module)


def record(kind: str, name: str, obj: object, provider: Provider | None = None) -> None:
    """Note who registered ``name`` in the ``kind`` registry (called by every registry's register function).

    Without ``provider``: segpipe for objects defined in segpipe, the plug-in being loaded for others, else the
    installed distribution that holds the object's top-level package."""
    module = str(getattr(obj, "__module__", None) or "")
    PROVIDERS[(kind, name)] = provider or _provider_of_module(module)


def provider(kind: str, name: str) -> Provider | None:
    """Who registered ``name`` in the ``kind`` registry (None: not registered through a register function)."""
    return PROVIDERS.get((kind, name))


def provenance(keys: Mapping[str, str | Iterable[str]]) -> dict[str, dict[str, dict[str, str | None]]]:
    """``{kind: {name: {"package", "version"}}}`` for registry keys ``{kind: name or [names]}`` (what a
    checkpoint records beside the keys; an entry registered without a register function has package None)."""
    out: dict[str, dict[str, dict[str, str | None]]] = {}
    for kind, names in keys.items():
        registry(kind)  # its in-tree entries are recorded when its module is imported
        for name in [names] if isinstance(names, str) else names:
            p = provider(kind, name)
            out.setdefault(kind, {})[name] = p.to_json() if p else {"package": None, "version": None}
    return out


def _table(kind: str) -> dict[str, Any]:
    """The registry dict of ``kind`` as its module holds it now (no plug-in loading: used while registering)."""
    module, attribute = REGISTRIES[kind]
    table: dict[str, Any] = getattr(importlib.import_module(module), attribute)
    return table


class Registrar(Generic[T]):
    """The ``@register_<kind>(name)`` decorator of a registry: stores the object under ``name`` in the registry of
    ``kind`` (:data:`REGISTRIES`, looked up when called) and records its provider (:func:`record`)."""

    def __init__(self, kind: str):
        self.kind = kind

    def __call__(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            _table(self.kind)[name] = obj
            record(self.kind, name, obj)
            return obj

        return deco


def lookup(kind: str, name: str, fix: str, label: str | None = None) -> Any:
    """The entry ``name`` of the registry of ``kind`` once the plug-ins are loaded; otherwise a SegpipeError naming
    the unknown ``label`` (default ``kind``) with a did-you-mean hint and the plug-ins that failed to load. ``fix``
    may use ``{names}`` (the known names, comma-separated) and ``{listed}`` (their sorted list)."""
    from segpipe.errors import did_you_mean, fail

    registry(kind)  # the in-tree entries and the plug-ins, loaded
    table = _table(kind)
    if name not in table:
        raise fail(f"unknown {label or kind} '{name}'{did_you_mean(name, table)}{load_errors_note()}",
                   fix.format(names=", ".join(sorted(table)), listed=sorted(table)))
    return table[name]


def load_errors_note() -> str:
    """`` (plug-ins that failed to load: ...)`` for error messages about a missing key, or ''."""
    if not LOAD_ERRORS:
        return ""
    return " (plug-ins that failed to load: " + "; ".join(e.describe() for e in LOAD_ERRORS) + ")"


@contextlib.contextmanager
def loading_as(p: Provider) -> Iterator[None]:
    """Attribute registrations inside the block to ``p`` (as while its entry point loads); for tests and tools
    that register components of a package by hand."""
    _current.append(p)
    try:
        yield
    finally:
        _current.pop()


class PluginRegistry:
    """What a plug-in's ``register(registry)`` receives: one method per kind of component, each usable as a
    decorator (``@registry.network("name", capabilities=...)``) or called with the object. Everything
    registered through it is attributed to the plug-in's distribution (:attr:`provider`)."""

    def __init__(self, provider: Provider):
        self.provider = provider

    def _register(self, kind: str, name: str, obj: T | None, add: Callable[[T], object]) -> Any:
        def deco(o: T) -> T:
            module, attribute = REGISTRIES[kind]
            taken = provider(kind, name)
            if name in getattr(importlib.import_module(module), attribute) and taken is not None \
                    and taken.package != self.provider.package:
                raise ValueError(f"the {kind} name '{name}' is taken by {taken.package}; register under another name")
            add(o)
            record(kind, name, o, self.provider)
            return o

        return deco if obj is None else deco(obj)

    def network(self, name: str, builder: Any = None, *, capabilities: Any = None) -> Any:
        """A network builder ``builder(spec: NetworkSpec) -> nn.Module`` and its :class:`NetworkCapabilities`
        (:mod:`segpipe.networks.spec`)."""
        from segpipe.networks.registry import register_network

        return self._register("network", name, builder, register_network(name, capabilities=capabilities))

    def trainer(self, name: str, cls: Any = None) -> Any:
        """A :class:`segpipe.training.trainer.Trainer` subclass."""
        from segpipe.training.trainer import register_trainer

        return self._register("trainer", name, cls, register_trainer(name))

    def loss(self, name: str, factory: Any = None) -> Any:
        """A loss factory ``factory(config, regions) -> nn.Module`` (:mod:`segpipe.training.loss`)."""
        from segpipe.training.loss import register_loss

        return self._register("loss", name, factory, register_loss(name))

    def normalizer(self, name: str, fn: Any = None) -> Any:
        """A normalization scheme (:mod:`segpipe.preprocessing.normalization`)."""
        from segpipe.preprocessing.normalization import register

        return self._register("normalizer", name, fn, register(name))

    def metric(self, name: str, fn: Any = None) -> Any:
        """A per-class metric (:mod:`segpipe.evaluation.metric_registry`)."""
        from segpipe.evaluation.metric_registry import register_metric

        return self._register("metric", name, fn, register_metric(name))

    def predictor(self, name: str, fn: Any = None) -> Any:
        """A predictor (:mod:`segpipe.inference.predictors`)."""
        from segpipe.inference.predictors import register_predictor

        return self._register("predictor", name, fn, register_predictor(name))
