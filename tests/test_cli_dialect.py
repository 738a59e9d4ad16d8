"""The CLI speaks one dialect: the same flags for the same things in every stage (nnU-Net's short flags where
they exist), and ``segpipe --help`` lists the stages in chain order, one line each."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from segpipe.cli import build_parser, main

CHAIN = ["onboard", "fingerprint", "plan", "preprocess", "train", "select", "predict", "adapt", "evaluate",
         "report", "export-model", "import-model", "export-network", "run", "demo"]

# a concept -> the option strings every stage that has it must accept (found by its long name)
SAME_FLAGS = {
    "--workspace": {"--workspace", "-w"},
    "--name": {"--name", "-n", "-d"},
    "--config": {"--config", "-c"},
    "--fold": {"--fold", "--folds", "-f"},
    "--folds": {"--fold", "--folds", "-f"},
    "--input": {"--input", "-i"},
    "--output": {"--output", "-o"},
    "--checkpoint": {"--checkpoint", "-chk"},
    "--trainer": {"--trainer", "-tr"},
}


def _stages() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_help_lists_the_stages_in_chain_order_one_line_each():
    out = subprocess.run([sys.executable, "-m", "segpipe", "--help"], capture_output=True, text=True,
                         env={"COLUMNS": "80", "PATH": ""}, check=True).stdout
    lines = [ln for ln in out.splitlines() if ln.startswith("    ") and ln.split()]
    names = [ln.split()[0] for ln in lines]
    assert names == CHAIN
    assert all(len(ln.split()) > 2 for ln in lines)  # the description is on the stage's own line
    assert list(_stages()) == CHAIN


@pytest.mark.parametrize("stage", CHAIN)
def test_each_stage_uses_the_common_flag_names(stage: str):
    options = {s for a in _stages()[stage]._actions for s in a.option_strings}
    for concept, expected in SAME_FLAGS.items():
        if concept in options:
            assert expected <= options, (stage, concept, expected - options)
    if "--device" in options or "--precision" in options:
        assert {"--device", "--precision"} <= options, stage
    assert not any(o.startswith("--") and "_" in o for o in options), stage  # kebab-case long options


def test_device_precision_and_workers_where_work_is_done():
    stages = _stages()
    for stage in ("plan", "train", "predict", "run", "demo"):
        assert {"--device", "--precision"} <= {s for a in stages[stage]._actions for s in a.option_strings}, stage
    for stage in ("onboard", "fingerprint", "preprocess", "train", "predict", "evaluate", "run", "demo"):
        assert "--workers" in {s for a in stages[stage]._actions for s in a.option_strings}, stage
    assert "--pixel-spacing" in {s for a in stages["evaluate"]._actions for s in a.option_strings}


def test_train_takes_several_folds_in_turn(tiny_ws_template, tmp_path, capsys):
    from conftest import copy_ws

    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    assert main(["train", "-w", str(ws), "-d", "tiny", "-c", "3d_fullres", "--folds", "1", "0", "1",
                 "--epochs", "1", "--iterations-per-epoch", "1", "--val-iterations", "1", "--workers", "0",
                 "--no-validation"]) == 0
    out = capsys.readouterr().out
    assert [ln.split()[2] for ln in out.splitlines() if ln.startswith("3d_fullres fold")] == ["1:", "0:"]
