"""Every number the planner uses, in one place. Values follow nnU-Net v2's default planner (2.8.1)."""

ANISOTROPY_THRESHOLD = 3.0            # an axis is "anisotropic" when its spacing is > 3x the others'
ANISO_SPACING_PERCENTILE = 10         # percentile of the coarse axis' spacings used when anisotropic
ANISO_SPACING_EPSILON = 1e-5          # added when the coarse target had to be raised to the others' spacing

INITIAL_PATCH_VOXELS_3D = 256 ** 3    # starting patch volume (voxels), shaped by the spacing
INITIAL_PATCH_VOXELS_2D = 2048 ** 2
FEATUREMAP_MIN_EDGE = 4               # an axis is pooled only while its feature map stays >= 4 voxels
POOL_SPACING_RATIO = 2.0              # pool/3-kernel an axis only while its spacing is < 2x the finest
MAX_POOLS_PER_AXIS = 999_999          # effectively unlimited

BASE_FEATURES = 32                    # features of the first stage, doubled per stage ...
MAX_FEATURES_3D = 320                 # ... up to this cap (3D)
MAX_FEATURES_2D = 512                 # ... and this one (2D)
CONVS_PER_STAGE_ENCODER = 2
CONVS_PER_STAGE_DECODER = 2

# memory model: number of conv output activations of the U-Net for one patch ("feature map voxels"),
# compared against a reference measured for a GPU of REFERENCE_MEMORY_GB at a reference batch size
REFERENCE_FEATURE_MAP_VOXELS_3D = 560_000_000
REFERENCE_FEATURE_MAP_VOXELS_2D = 85_000_000
REFERENCE_MEMORY_GB = 8.0
REFERENCE_BATCH_3D = 2
REFERENCE_BATCH_2D = 12
DEFAULT_MEMORY_GB = 8.0               # the budget assumed unless --memory-gb is given

MIN_BATCH_SIZE = 2
MAX_DATASET_COVERED = 0.05            # one batch covers at most 5% of the dataset's voxels

LOWRES_CREATION_THRESHOLD = 0.25      # make 3d_lowres when the fullres patch covers < 1/4 of the median image
LOWRES_SPACING_STEP = 1.03            # lowres spacing grows by 3% per step
LOWRES_MIN_SIZE_RATIO = 2.0           # drop 3d_lowres unless the median image shrinks at least 2x

USE_MASK_FOR_NORM_BELOW = 0.75        # z-score inside the nonzero mask when cropping kept < 75% of the volume
IMAGE_RESAMPLING_ORDER = 3
LABEL_RESAMPLING_ORDER = 1
COARSE_AXIS_RESAMPLING_ORDER = 0
