"""Onboarding converters: each turns a user's folder into a :class:`~segpipe.dataset.model.DatasetSpec`.

Converters only read; they describe where the files are (paths relative to the folder) and never move them.
They are looked up by name in :data:`FORMATS`; ``auto`` picks one by looking at the folder.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from segpipe.dataset.formats.common import OnboardOptions
from segpipe.dataset.formats.flat import discover_flat
from segpipe.dataset.formats.msd import discover_msd
from segpipe.dataset.formats.nnunet import discover_nnunet
from segpipe.dataset.model import DatasetSpec
from segpipe.errors import Problem, did_you_mean, fail

Converter = Callable[[Path, OnboardOptions], tuple[DatasetSpec, list[Problem]]]

FORMATS: dict[str, Converter] = {"msd": discover_msd, "nnunet": discover_nnunet, "flat": discover_flat}


def detect_format(source: Path, options: OnboardOptions) -> str:
    """Guess the layout of ``source``: nnU-Net v2 raw, MSD task folder, or flat (needs ``--image-glob``)."""
    if options.image_globs:
        return "flat"
    dj = source / "dataset.json"
    if dj.is_file():
        import json

        try:
            d = json.loads(dj.read_text())
        except (OSError, ValueError):
            d = {}
        if isinstance(d, dict) and "channel_names" in d:
            return "nnunet"
        if isinstance(d, dict) and ("modality" in d or "training" in d):
            return "msd"
    if (source / "imagesTr").is_dir() and (source / "labelsTr").is_dir():
        names = [p.name for p in (source / "imagesTr").iterdir() if not p.name.startswith(".")]
        return "nnunet" if names and all("_0000" in n or "_000" in n for n in names[:50]) else "msd"
    raise fail("cannot tell the folder's layout: no dataset.json and no imagesTr/labelsTr folders",
               "give --image-glob and --label-glob (e.g. --image-glob 'images/*.png' --label-glob "
               "'masks/*_mask.png'), or --format msd|nnunet", file=source)


def discover(source: Path, options: OnboardOptions) -> tuple[DatasetSpec, list[Problem]]:
    fmt = options.format if options.format != "auto" else detect_format(source, options)
    if fmt not in FORMATS:
        raise fail(f"unknown format '{fmt}'{did_you_mean(fmt, FORMATS)}", f"use one of: auto, {', '.join(FORMATS)}")
    return FORMATS[fmt](source, options)
