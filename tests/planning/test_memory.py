"""The memory model reproduces nnU-Net v2's feature-map count (values in tests/fixtures/nnunet_reference)."""
from segpipe.planning.memory import feature_map_voxels

S3 = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
S2 = [[1, 1], [2, 2], [2, 2], [2, 2]]
F = [32, 64, 128, 256]


def test_hippocampus_3d_fullres():
    assert feature_map_voxels([40, 56, 40], S3, F, 3) == 19_174_400
    assert feature_map_voxels([40, 56, 40], S3, F, 3, deep_supervision=True) == 19_212_200


def test_hippocampus_2d():
    assert feature_map_voxels([56, 40], S2, F, 3) == 651_840


def test_anisotropic_3d():
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert feature_map_voxels([12, 56, 40], strides, F, 3) == 7_176_960
