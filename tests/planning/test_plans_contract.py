"""The plans contract (segpipe/planning/plans.py): plans.json parsed and validated once, typed, round-tripped."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import copy_ws

from segpipe.cli import main
from segpipe.errors import SegpipeError
from segpipe.io.jsonio import read_json, write_json
from segpipe.planning.plans import Configuration, Plans, Topology, read_plans
from segpipe.records import content_hash, up_to_date
from segpipe.workspace import Workspace


def _doc(ws: Path) -> dict:
    return read_json(ws / "tiny" / "plans.json", kind="plans")


def _broken(tmp_path: Path, tiny_ws_template: Path, change) -> tuple[Path, Path]:
    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    doc = _doc(ws)
    change(doc)
    write_json(ws / "tiny" / "plans.json", doc, kind="plans")
    return ws, ws / "tiny" / "plans.json"


def test_a_written_plan_parses_into_typed_objects_and_round_trips(tiny_ws_template: Path):
    path = tiny_ws_template / "tiny" / "plans.json"
    plans = read_plans(path)
    cfg = plans.configuration()  # the default configuration
    assert cfg.name == plans.default_configuration == "3d_fullres"
    assert cfg.trainer == "default" and cfg.network.name == "plain"
    assert isinstance(cfg.network.topology, Topology) and cfg.network.topology.ndim == 3 == cfg.ndim
    assert all(p % d == 0 for p, d in zip(cfg.patch_size, cfg.network.topology.total_stride))
    assert len(cfg.normalization) == plans.n_channels == 1 and cfg.resampling.image_order == 3
    doc = {k: v for k, v in read_json(path, kind="plans").items() if k not in ("schema_version", "kind")}
    assert json.loads(json.dumps(plans.to_json())) == doc
    assert Plans.from_json(plans.to_json()) == plans  # frozen value objects: parse(write(x)) == x


@pytest.mark.parametrize(("where", "change", "named"), [
    ("resampling", lambda d: d["configurations"]["3d_fullres"].pop("resampling"),
     "configurations.3d_fullres lacks 'resampling'"),
    ("trainer", lambda d: d["configurations"]["2d"].pop("trainer"), "configurations.2d lacks 'trainer'"),
    ("strides", lambda d: d["configurations"]["3d_fullres"]["network"].update(strides=[[1, 1, 1], [2, 2]]),
     "configurations.3d_fullres.network"),
    ("patch", lambda d: d["configurations"]["3d_fullres"].update(patch_size=[17, 24, 16]),
     "not divisible by the network's total stride"),
    ("batch", lambda d: d["configurations"]["2d"].update(batch_size=0), "configurations.2d.batch_size is 0"),
    ("channels", lambda d: d["configurations"]["2d"]["normalization"].append(
        dict(d["configurations"]["2d"]["normalization"][0])), "normalizes 2 channel(s), the data set has 1"),
    ("default", lambda d: d.update(default_configuration="3d_lowres"), "'3d_lowres' is not one of the planned"),
])
def test_a_broken_plan_is_refused_naming_the_key_and_the_fix(tmp_path: Path, tiny_ws_template: Path, where, change,
                                                             named):
    ws, path = _broken(tmp_path, tiny_ws_template, change)
    with pytest.raises(SegpipeError) as info:
        read_plans(path)
    (p,) = info.value.problems
    assert named in p.problem and "segpipe plan --force" in p.fix and p.file == str(path)


def test_preprocess_never_falls_back_to_default_resampling(tmp_path: Path, tiny_ws_template: Path, capsys):
    ws, path = _broken(tmp_path, tiny_ws_template, lambda d: d["configurations"]["3d_fullres"].pop("resampling"))
    capsys.readouterr()
    assert main(["preprocess", "-w", str(ws), "--config", "3d_fullres", "--force", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "lacks 'resampling'" in err and str(path) in err


def test_a_plan_from_an_older_segpipe_is_planned_again(tmp_path: Path, tiny_ws_template: Path, capsys):
    def old(doc: dict) -> None:
        for c in doc["configurations"].values():
            c.pop("trainer")

    ws, path = _broken(tmp_path, tiny_ws_template, old)
    # as an older segpipe left it: the plan record matches the (old) plans.json, so only parsing can notice
    record = ws / "tiny" / "records" / "plan.json"
    rec = read_json(record, kind="stage_record")
    rec["outputs"] = {"plans.json": content_hash(path)}
    write_json(record, rec, kind="stage_record")
    assert up_to_date(Workspace(ws, "tiny"), "plan", rec["inputs"], rec["settings"], [path])
    assert main(["plan", "-w", str(ws)]) == 0
    assert "planning again" in capsys.readouterr().err
    assert all(c.trainer == "default" for c in read_plans(path).configurations.values())


def test_unknown_keys_survive_a_round_trip(tiny_ws_template: Path):
    doc = _doc(tiny_ws_template)
    doc["configurations"]["2d"]["my_plugin"] = {"alpha": 0.5}
    doc["configurations"]["2d"]["network"]["dropout"] = 0.1
    doc["configurations"]["2d"]["normalization"][0]["window"] = [0, 80]
    plans = Plans.from_json(doc)
    cfg = plans.configuration("2d")
    assert cfg.extra == {"my_plugin": {"alpha": 0.5}} and cfg.network.extra == {"dropout": 0.1}
    out = plans.to_json()["configurations"]["2d"]
    assert out["my_plugin"] == {"alpha": 0.5} and out["network"]["dropout"] == 0.1
    assert out["normalization"][0]["window"] == [0, 80]


def test_an_unknown_configuration_gets_a_did_you_mean(tiny_ws_template: Path):
    plans = read_plans(tiny_ws_template / "tiny" / "plans.json")
    with pytest.raises(SegpipeError, match="did you mean '3d_fullres'"):
        plans.configuration("3d_fulres")


def test_configuration_needs_matching_axes(tiny_ws_template: Path):
    doc = _doc(tiny_ws_template)["configurations"]["2d"]
    doc["spacing"] = [1.0, 1.0, 1.0]
    with pytest.raises(SegpipeError, match="need the same 2 or 3 axes"):
        Configuration.from_json("2d", doc)
