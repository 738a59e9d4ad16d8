"""`segpipe report` without a browser: sections only for the stages that ran, every name escaped, nothing written
outside report/, a failed build keeps the old report, an unchanged workspace is skipped, and a report that
cannot be written never fails `segpipe run`."""
from __future__ import annotations

import html
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_ws, make_synthetic_dataset, tree_state

from segpipe.cli import main
from segpipe.errors import SegpipeError
from segpipe.report import write_report
from segpipe.report.overlays import RankedCase, best_slice, mean_foreground_dice, pick_cases, through_plane_axis
from segpipe.workspace import Workspace

TRAIN = ["--epochs", "1", "--iterations-per-epoch", "2", "--val-iterations", "1", "--workers", "0", "--threads", "1",
         "--device", "cpu"]


def sections_of(index: Path) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', index.read_text(encoding="utf-8"))


def outside_report(ws_dir: Path) -> dict[str, str]:
    return {k: v for k, v in tree_state(ws_dir).items() if not k.startswith("report")}


@pytest.fixture(scope="module")
def tiny(tiny_ws_template: Path, tmp_path_factory) -> Workspace:
    """A copy of the tiny workspace (6 hippocampus cases, planned, 3d_fullres preprocessed, nothing trained)."""
    return Workspace(copy_ws(tiny_ws_template, tmp_path_factory.mktemp("report") / "ws"), "tiny")


def test_sections_follow_the_stages_that_ran(tiny: Workspace, capsys):
    ws = tiny
    before = outside_report(ws.dir)
    assert main(["report", "-w", str(ws.root)]) == 0
    assert f"report (2 section(s)): {ws.report / 'index.html'}" in capsys.readouterr().out
    assert sections_of(ws.report / "index.html") == ["data", "plans"]
    assert outside_report(ws.dir) == before  # a pure reader: nothing but report/ changes

    for fold in range(5):  # every fold: cross-validation of all 6 cases, then select
        assert main(["train", "-w", str(ws.root), "--config", "3d_fullres", "--fold", str(fold), *TRAIN]) == 0
        if fold == 0:
            r = write_report(ws)
            assert r.sections == ["data", "plans", "training", "cross-validation", "cases"]
    assert main(["select", "-w", str(ws.root), "--config", "3d_fullres"]) == 0
    before = outside_report(ws.dir)
    r = write_report(ws)
    assert r.sections == ["data", "plans", "training", "cross-validation", "selection", "cases"]
    assert outside_report(ws.dir) == before
    page = (ws.report / "index.html").read_text(encoding="utf-8")
    # every image the page links is beside it; best, median and worst case shown
    links = re.findall(r'<img src="([^"]+)"', page)
    assert links and all((ws.report / link).is_file() for link in links)
    assert sum("_case_" in link for link in links) == 3
    for role in ("best:", "median:", "worst:"):
        assert role in page
    # per case and class: 6 cases x 2 classes in the sortable table
    cv = page.split('<section id="cross-validation">')[1].split("</section>")[0]
    assert cv.count('<td data-v="hippocampus_') == 12
    assert "anterior" in cv and "3d_fullres: why" in page and "patch_size" in page
    assert not [p for p in ws.dir.iterdir() if p.name.startswith(".tmp-")]


def test_unchanged_workspace_is_skipped_and_a_failed_build_keeps_the_old_report(tiny: Workspace, monkeypatch):
    ws = tiny
    write_report(ws)
    state = tree_state(ws.report)
    assert write_report(ws).skipped and tree_state(ws.report) == state

    import segpipe.report.run as report_run

    def broken(data, images):
        images.add("half_written", b"\x89PNG not really")
        raise RuntimeError("plotting failed half-way")

    monkeypatch.setattr(report_run, "SECTIONS", (*report_run.SECTIONS, broken))
    with pytest.raises(SegpipeError, match="plotting failed half-way"):
        write_report(ws, force=True)
    assert tree_state(ws.report) == state  # the old report, whole
    assert not [p for p in ws.dir.iterdir() if p.name.startswith(".tmp-")]  # no half-built report left


def test_names_from_the_data_are_escaped(tmp_path: Path):
    ds = make_synthetic_dataset(tmp_path / "src", "msd", n_cases=3, n_classes=1, with_json=False)
    label = '<b>head&"neck"</b>'
    channel = "<script>alert(1)</script>"
    assert main(["onboard", str(ds.root), "--name", "esc", "-w", str(tmp_path / "ws"), "--workers", "1",
                 "--labels", "background=0", f"{label}=1", "--channels", channel]) == 0
    ws = Workspace(tmp_path / "ws", "esc")
    assert write_report(ws).sections == ["data"]  # onboarded only
    assert main(["fingerprint", "-w", str(ws.root), "--workers", "1"]) == 0
    assert main(["plan", "-w", str(ws.root)]) == 0
    assert write_report(ws).sections == ["data", "plans"]
    page = (ws.report / "index.html").read_text(encoding="utf-8")
    assert label not in page and channel not in page
    assert html.escape(label) in page and html.escape(channel) in page
    assert page.count("<script>") == 2  # the page's own two scripts only


def test_a_report_that_cannot_be_written_does_not_fail_the_run(tiny: Workspace, monkeypatch, caplog):
    import segpipe.pipeline as pipeline

    def fail(ws, force=False):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "write_report", fail)
    said: list[str] = []
    with caplog.at_level(logging.WARNING):
        assert pipeline.report_at_end(tiny, said.append) is None
    assert not said
    assert "the report could not be written: OSError: [Errno 28] No space left on device" in caplog.text
    assert "segpipe report --workspace" in caplog.text


def test_case_picking_and_slicing():
    scores = [RankedCase(f"c{i}", "0", d) for i, d in enumerate([0.5, 0.9, 0.7, 0.2, 0.8])]
    assert [(r.role, r.case) for r in pick_cases(scores)] == [("best", "c1"), ("median", "c2"), ("worst", "c3")]
    assert [r.role for r in pick_cases(scores[:1])] == ["best"]
    assert mean_foreground_dice({"a": {"dice": 0.5}, "b": {"dice": None}, "c": {"dice": 1.0}}) == 0.75
    assert mean_foreground_dice({"a": {"dice": None}}) is None
    assert through_plane_axis((1.0, 1.0, 1.0)) == 0 and through_plane_axis((0.8, 0.8, 5.0)) == 2
    ref = np.zeros((4, 6, 5), np.int16)
    ref[2, 1:5, 1:4] = 1
    ref[1, 2, 2] = 1
    assert best_slice(ref, np.zeros_like(ref), 0) == 2
    assert best_slice(np.zeros_like(ref), ref, 0) == 2  # the prediction's, when the reference is empty
    assert best_slice(np.zeros_like(ref), np.zeros_like(ref), 1) == 3


def test_a_damaged_artifact_is_named_on_the_page_instead_of_stopping_the_report(tmp_path: Path):
    ds = make_synthetic_dataset(tmp_path / "src", "msd", n_cases=2, n_classes=1)
    assert main(["onboard", str(ds.root), "--name", "dmg", "-w", str(tmp_path / "ws"), "--workers", "1"]) == 0
    assert main(["fingerprint", "-w", str(tmp_path / "ws"), "--workers", "1"]) == 0
    ws = Workspace(tmp_path / "ws", "dmg")
    ws.fingerprint_json.write_text("{ not json")
    r = write_report(ws)
    assert r.sections == ["data"] and len(r.problems) == 1 and "fingerprint.json" in r.problems[0]
    page = (ws.report / "index.html").read_text(encoding="utf-8")
    assert "some artifacts could not be read" in page and "not valid JSON" in page


def test_uncertainty_and_fairness_panels_follow_the_recorded_runs(tiny_one_fold: Path, tmp_path: Path):
    """The panels appear once a recorded `predict --uncertainty` / `evaluate --attributes --group-by` exists, and
    show those runs' per-case scores and per-group Dice, found through the workspace's records."""
    import json

    from conftest import hippo_ids, make_msd

    ws = Workspace(copy_ws(tiny_one_fold, tmp_path / "ws"), "tiny")
    for rec in [*ws.records.glob("predict_*.json"), *ws.records.glob("evaluate_*.json")]:
        rec.unlink()  # other tests predicted with the shared model: start without recorded runs
    assert not {"uncertainty", "fairness"} & set(write_report(ws).sections)
    src = make_msd(tmp_path / "src", hippo_ids(4))
    out = tmp_path / "pred"
    assert main(["predict", "-w", str(ws.root), "-i", str(src / "imagesTr"), "-o", str(out), "-f", "0",
                 "--disable-tta", "--uncertainty", "--workers", "1"]) == 0
    scores = json.loads((out / "uncertainty.json").read_text())["cases"]
    csv = tmp_path / "cases.csv"
    csv.write_text("case_id,site\n" + "".join(f"{c},{'A' if i % 2 else 'B'}\n" for i, c in enumerate(hippo_ids(4))))
    assert main(["evaluate", "-w", str(ws.root), "--pred", str(out), "--ref", str(src / "labelsTr"), "-o",
                 str(tmp_path / "ev"), "--attributes", str(csv), "--group-by", "site", "--no-surface"]) == 0
    r = write_report(ws)
    assert "uncertainty" in r.sections and "fairness" in r.sections
    page = (ws.report / "index.html").read_text(encoding="utf-8")
    unc = page.split('<section id="uncertainty">')[1].split("</section>")[0]
    assert all(cid in unc for cid in scores) and f"{round(max(c['score'] for c in scores.values()), 4)}" in unc
    fair = page.split('<section id="fairness">')[1].split("</section>")[0]
    assert "grouped by site" in fair and "ES-Dice" in fair and ">A<" in fair and ">B<" in fair
