import json
from pathlib import Path

from segpipe.planning.topology import derive_topology, features_per_stage, pad_to_multiple

REF = Path(__file__).resolve().parents[1] / "fixtures" / "nnunet_reference"


def _lists(tuples) -> list[list[int]]:
    return [list(t) for t in tuples]


def _nnunet(name: str, cfg: str) -> dict:
    plans = json.loads((REF / f"{name}_plans.json").read_text())
    return plans["configurations"][cfg]


def test_hippocampus_fullres_matches_nnunet():
    ref = _nnunet("hippocampus", "3d_fullres")
    topo, patch = derive_topology([1.0, 1.0, 1.0], [36, 50, 35])
    assert list(patch) == ref["patch_size"]
    assert _lists(topo.strides) == ref["architecture"]["arch_kwargs"]["strides"]
    assert _lists(topo.kernel_sizes) == ref["architecture"]["arch_kwargs"]["kernel_sizes"]


def test_anisotropic_kernel_1_on_coarse_axis_until_it_catches_up():
    ref = _nnunet("aniso", "3d_fullres")
    topo, patch = derive_topology([3.0, 1.0, 1.0], [12, 49.5, 36])
    assert topo.kernel_sizes[0] == (1, 3, 3) and topo.strides[1] == (1, 2, 2)
    assert list(patch) == ref["patch_size"]
    assert _lists(topo.strides) == ref["architecture"]["arch_kwargs"]["strides"]
    assert _lists(topo.kernel_sizes) == ref["architecture"]["arch_kwargs"]["kernel_sizes"]


def test_patch_divisible_by_total_stride_and_edges_at_least_4():
    topo, patch = derive_topology([0.7, 0.7], [517, 389])
    for p, d in zip(patch, topo.total_stride):
        assert p % d == 0 and p // d >= 4


def test_pad_and_features():
    assert pad_to_multiple([49.5, 35, 40], [8, 8, 8]) == [56, 40, 40]
    assert features_per_stage(7, 3) == [32, 64, 128, 256, 320, 320, 320]
    assert features_per_stage(8, 2)[-1] == 512
