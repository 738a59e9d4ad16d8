"""Untrusted files: no pickle anywhere, checkpoints only with weights_only=True, arrays without pickle."""
from __future__ import annotations

import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "segpipe"


def _sources() -> dict[str, str]:
    return {str(p.relative_to(PKG)): p.read_text() for p in PKG.rglob("*.py")}


def test_no_pickle_module_and_no_pickled_arrays():
    for name, text in _sources().items():
        assert not re.search(r"^\s*(import pickle|from pickle|import dill|import joblib)", text, re.M), name
        assert "allow_pickle=True" not in text, name


def test_every_torch_load_is_weights_only():
    calls = [(name, m.group(0)) for name, text in _sources().items()
             for m in re.finditer(r"torch\.load\([^)]*\)", text)]
    assert calls, "expected checkpoint loading somewhere"
    for name, call in calls:
        assert "weights_only=True" in call, f"{name}: {call}"
