"""Tests of segpipe/plugins.py: loading the ``segpipe.plugins`` entry points, a broken plug-in's report, who
provided each registry key, and the message for a checkpoint whose plug-in is missing. The entry points are
fakes here; tests/test_plugin_package.py installs a real plug-in package."""
from __future__ import annotations

import logging
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from segpipe import plugins
from segpipe.errors import SegpipeError
from segpipe.evaluation import metric_registry
from segpipe.evaluation.metric_registry import class_metric, get_metric
from segpipe.inference import predictors
from segpipe.inference.sliding_window import predict_sliding_window
from segpipe.networks import NetworkCapabilities, registry, resolve_network_name
from segpipe.training import loss as loss_module
from segpipe.training import trainer as trainer_module
from segpipe.training.checkpoint import check_registered


class FakeDist:
    def __init__(self, name: str, version: str):
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    """What importlib.metadata gives for one entry point of an installed distribution."""

    def __init__(self, name: str, value: str, dist: FakeDist | None, target=None, error: Exception | None = None):
        self.name, self.value, self.dist = name, value, dist
        self.module = value.split(":")[0]
        self._target, self._error = target, error

    def load(self):
        if self._error is not None:
            raise self._error
        return self._target


@pytest.fixture
def fresh(monkeypatch):
    """Registries, provenance records and the loading state as they are, restored after the test."""
    plugins.load_plugins()
    monkeypatch.setattr(registry, "NETWORKS", dict(registry.NETWORKS))
    monkeypatch.setattr(trainer_module, "TRAINERS", dict(trainer_module.TRAINERS))
    monkeypatch.setattr(loss_module, "LOSSES", dict(loss_module.LOSSES))
    monkeypatch.setattr(metric_registry, "METRICS", dict(metric_registry.METRICS))
    monkeypatch.setattr(predictors, "PREDICTORS", dict(predictors.PREDICTORS))
    monkeypatch.setattr(plugins, "PROVIDERS", dict(plugins.PROVIDERS))
    monkeypatch.setattr(plugins, "LOAD_ERRORS", [])
    monkeypatch.setattr(plugins, "_state", {"loaded": False})


def _tiny_net(spec):
    return nn.Conv3d(spec.in_channels, spec.n_outputs, 1)


def _good_register(reg: plugins.PluginRegistry) -> None:
    reg.network("good-net", _tiny_net, capabilities=NetworkCapabilities(supports_deep_supervision=False))

    @reg.metric("always-one")
    def one(pred, ref, spacing):
        return 1.0

    reg.predictor("centre-only", predict_sliding_window)
    reg.trainer("good-trainer", trainer_module.Trainer)


def test_plugins_register_through_the_registry_they_are_given_and_are_attributed(fresh, monkeypatch):
    module = types.ModuleType("module_plugin")  # an entry point naming a module: importing it registered
    monkeypatch.setitem(sys.modules, "module_plugin", module)
    eps = [FakeEntryPoint("good", "good_plugin:register", FakeDist("segpipe-good", "2.0.1"), _good_register),
           FakeEntryPoint("mod", "module_plugin", FakeDist("segpipe-mod", "0.3"), module)]
    monkeypatch.setattr(plugins, "_entry_points", lambda: eps)
    assert plugins.load_plugins() == []
    assert resolve_network_name("good-net") == "good-net"
    good = plugins.Provider("segpipe-good", "2.0.1", "good_plugin")
    assert plugins.provider("network", "good-net") == good
    assert plugins.provider("trainer", "good-trainer") == good  # a segpipe class, registered by the plug-in
    assert plugins.provider("predictor", "centre-only") == good
    assert plugins.provider("network", "plain") == plugins.SEGPIPE
    assert get_metric("always-one")(np.ones(2, bool), np.ones(2, bool), (1.0,)) == 1.0
    assert plugins.provenance({"network": "good-net", "normalizer": ["zscore"]}) == {
        "network": {"good-net": {"package": "segpipe-good", "version": "2.0.1"}},
        "normalizer": {"zscore": {"package": "segpipe", "version": plugins.SEGPIPE.version}}}


def test_a_broken_plugin_is_reported_and_the_rest_keeps_working(fresh, monkeypatch, caplog):
    def raising_register(reg):
        raise RuntimeError("needs CUDA 13")

    eps = [FakeEntryPoint("missing", "not_installed_mod:register", FakeDist("segpipe-broken", "1.0"),
                          error=ModuleNotFoundError("No module named 'not_installed_mod'")),
           FakeEntryPoint("raises", "raising:register", FakeDist("segpipe-raises", "0.9"), raising_register),
           FakeEntryPoint("good", "good_plugin:register", FakeDist("segpipe-good", "2.0.1"), _good_register)]
    monkeypatch.setattr(plugins, "_entry_points", lambda: eps)
    with caplog.at_level(logging.WARNING, logger="segpipe.plugins"):
        errors = plugins.load_plugins()
    assert [(e.package, e.entry_point) for e in errors] == [
        ("segpipe-broken", "missing = not_installed_mod:register"), ("segpipe-raises", "raises = raising:register")]
    assert errors[1].error == "RuntimeError: needs CUDA 13"
    assert "plug-in segpipe-broken 1.0, entry point 'missing = not_installed_mod:register': ModuleNotFoundError" \
        in caplog.text and "pip uninstall segpipe-broken" in caplog.text
    assert resolve_network_name("good-net") == "good-net" and resolve_network_name("plain") == "plain"
    with pytest.raises(SegpipeError) as e:
        resolve_network_name("broken-net")
    assert "needs CUDA 13" in e.value.format()  # an unknown name mentions the plug-ins that failed
    assert plugins.load_plugins() == errors  # loaded once: not again


def test_a_callable_that_is_not_a_register_function_is_a_load_error(fresh, monkeypatch):
    eps = [FakeEntryPoint("odd", "odd:VALUE", FakeDist("segpipe-odd", "1"), 42)]
    monkeypatch.setattr(plugins, "_entry_points", lambda: eps)
    (err,) = plugins.load_plugins()
    assert "neither a module nor a callable" in err.error


def test_a_plugin_cannot_take_a_name_another_package_registered(fresh, monkeypatch):
    class Hijack(trainer_module.Trainer):
        pass

    eps = [FakeEntryPoint("hijack", "hijack:register", FakeDist("segpipe-hijack", "1"),
                          lambda reg: reg.trainer("default", Hijack))]
    monkeypatch.setattr(plugins, "_entry_points", lambda: eps)
    (err,) = plugins.load_plugins()
    assert err.error == "ValueError: the trainer name 'default' is taken by segpipe; register under another name"
    assert trainer_module.get_trainer("default") is trainer_module.Trainer


def test_a_checkpoint_whose_plugin_is_missing_names_the_package_and_version(tmp_path):
    state = {"registry": {"network": "gone-net", "trainer": "gone-trainer", "normalizer": ["zscore", "gone-norm"]},
             "plugins": {"network": {"gone-net": {"package": "segpipe-gone", "version": "1.2.3"}},
                         "normalizer": {"gone-norm": {"package": None, "version": None}}}}
    with pytest.raises(SegpipeError) as e:
        check_registered(state, tmp_path / "checkpoint_final.pt")
    net, norm = e.value.problems
    assert "the network 'gone-net', from segpipe-gone 1.2.3, which is not installed here" in net.problem
    assert net.fix.startswith("pip install 'segpipe-gone==1.2.3'") and net.file.endswith("checkpoint_final.pt")
    assert "normalizer 'gone-norm'" in norm.problem and "does not say which" in norm.fix
    check_registered({"registry": {"network": "plain", "trainer": "gone-trainer"}}, tmp_path)  # trainers: not needed
    check_registered({"network_plan": {}}, tmp_path)  # a checkpoint of an older segpipe records no keys


def test_the_in_tree_metrics_and_predictor():
    pred = np.zeros((6, 6), np.int16)
    ref = np.zeros((6, 6), np.int16)
    pred[1:4, 1:4], ref[2:5, 1:4] = 1, 1
    assert class_metric("dice", pred, ref, 1, (1.0, 1.0)) == pytest.approx(2 * 6 / 18)
    assert class_metric("hd95", pred, ref, 1, (1.0, 2.0)) == pytest.approx(1.0)
    assert np.isnan(class_metric("dice", pred, ref, 2, (1.0, 1.0)))
    with pytest.raises(SegpipeError, match="did you mean 'dice'"):
        get_metric("dcie")
    assert predictors.get_predictor("sliding-window") is predict_sliding_window
    probs = predictors.get_predictor("sliding-window")(nn.Conv3d(1, 2, 1), torch.zeros(1, 4, 4, 4), [4, 4, 4], 2)
    assert probs.shape == (2, 4, 4, 4)
    assert plugins.provider("metric", "dice") == plugins.provider("predictor", "sliding-window") == plugins.SEGPIPE
