"""The code's layout rules (docs/architecture.md), checked on the source: who may import whom."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from segpipe.errors import SegpipeError, error_context

PACKAGE = Path(__file__).resolve().parents[1] / "segpipe"

# one runner per stage: the function behind `segpipe <stage>`
RUNNERS = {
    "segpipe.dataset.onboard", "segpipe.fingerprint.run", "segpipe.planning.run", "segpipe.preprocessing.run",
    "segpipe.training.run", "segpipe.inference.run", "segpipe.evaluation.evaluate", "segpipe.evaluation.selection",
    "segpipe.report.run", "segpipe.adaptation.run",
}
ORCHESTRATORS = {"segpipe.pipeline", "segpipe.demo"}  # the only modules that chain several runners


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every segpipe module ``path`` imports, at any level of the file (function-local imports included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in out if m.startswith("segpipe")}


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_runner_list_names_real_modules():
    assert RUNNERS | ORCHESTRATORS <= set(MODULES)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m not in ("segpipe.cli", "segpipe.__main__")))
def test_no_library_module_imports_the_command_line(module: str):
    assert "segpipe.cli" not in _imports(MODULES[module]), f"{module} imports segpipe.cli"


@pytest.mark.parametrize("module", sorted(RUNNERS))
def test_no_stage_runner_imports_another_stages_runner(module: str):
    others = (RUNNERS | ORCHESTRATORS) - {module}
    bad = sorted(m for m in _imports(MODULES[module]) if m in others)
    assert not bad, f"{module} imports {bad}: move what it needs into a store or core module"


def test_error_context_names_stage_and_case_of_an_unexpected_error():
    with pytest.raises(SegpipeError) as info:
        with error_context("validation", case="case_007"):
            raise ValueError("operands could not be broadcast")
    (p,) = info.value.problems
    assert p.case == "case_007" and p.problem.startswith("validation: unexpected ValueError: operands")
    assert "test_architecture.py" in p.problem and "Traceback" in (p.detail or "")
    assert isinstance(info.value.__cause__, ValueError)


def test_error_context_fills_in_the_case_of_a_user_error_and_lets_interrupts_through():
    from segpipe.errors import fail

    with pytest.raises(SegpipeError) as info:
        with error_context("select", case="c1", file="/x/c1.nii.gz"):
            raise fail("label value 7 is not declared", "declare it")
    assert info.value.problems[0].case == "c1" and info.value.problems[0].file == "/x/c1.nii.gz"
    with pytest.raises(KeyboardInterrupt):
        with error_context("train"):
            raise KeyboardInterrupt
