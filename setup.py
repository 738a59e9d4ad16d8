"""Installation of segpipe.

torch is required with a floor only: on machines without a GPU install the CPU build first
(``make`` does this), otherwise pip may fetch a multi-GB CUDA build.
"""
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "segpipe" / "_version.py").read_text(), version)

setup(
    name="segpipe",
    version=version["__version__"],
    description="Self-configuring medical image segmentation pipeline: fingerprint, plan, preprocess, train, predict",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["segpipe", "segpipe.*"]),
    package_data={"segpipe": ["py.typed", "data/example/*/*.json", "data/example/*/*.md",
                              "data/example/*/imagesTr/*.nii.gz", "data/example/*/labelsTr/*.nii.gz"]},
    include_package_data=True,
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "SimpleITK>=2.2",
        "torch>=2.1",
        "acvl-utils>=0.2",
        "tqdm>=4.60",
        "matplotlib>=3.6",
        "pillow>=9.0",  # PNG modes SimpleITK cannot read (grey+alpha), multi-page TIFF detection
        "blosc2>=2.5",  # preprocessed cases: compressed arrays read patch by patch (preprocessing/store.py)
    ],
    extras_require={
        "test": ["pytest>=7", "ruff>=0.6", "mypy>=1.10"],
        # `segpipe export-network --format onnx`: torch's torch.export-based exporter needs onnxscript
        "onnx": ["onnx>=1.17", "onnxruntime>=1.18", "onnxscript>=0.5"],
    },
    entry_points={"console_scripts": ["segpipe=segpipe.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)
