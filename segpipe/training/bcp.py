"""The ``bcp`` trainer: semi-supervised training with Bidirectional Copy-Paste (Bai et al., CVPR 2023).

It learns from the data set's labelled training cases and its unlabelled images (``imagesUnlabelled/``, see
:mod:`segpipe.dataset.formats.nnunet`), in two phases:

1. **Warm-up** (the first ``warmup`` share of training, 0.25 by default): ordinary supervised training on the
   labelled cases. At its end the teacher is a copy of the student.
2. **Copy-paste self-training**: every step pairs each labelled patch with an unlabelled one. The teacher (an
   exponential moving average of the student, weight ``ema`` = 0.99 per step) predicts the unlabelled patch;
   its argmax, reduced to the largest component per class, is the pseudo-label. A box spanning 2/3 of every
   axis is pasted both ways (:func:`segpipe.training.copy_paste.mix_both_ways`): half of the batch gets the
   unlabelled box inside a labelled image, half the labelled box inside an unlabelled image. The student's loss
   is the trainer's loss on the voxels from labelled images plus ``pseudo_weight`` (0.5) times the loss on the
   pseudo-labelled voxels. Validation, checkpoints and prediction use the student.

Options come from the plan (plans.json, the configuration's ``"bcp"``: ``{"warmup": 0.25, "ema": 0.99,
"pseudo_weight": 0.5, "box_fraction": 0.667}``), so a run is reproducible from its plan. The teacher is saved in
every checkpoint, and the unlabelled batches are a pure function of the iteration like the labelled ones: a
killed run resumes where it stopped. Classes only (softmax); region-based data sets and cascade stages are refused.
"""
from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from segpipe.errors import fail
from segpipe.training.copy_paste import BOX_FRACTION, box_mask, largest_components, mix_both_ways
from segpipe.training.data import BatchStream, make_loader
from segpipe.training.trainer import Trainer, register_trainer

log = logging.getLogger(__name__)

DEFAULTS = {"warmup": 0.25, "ema": 0.99, "pseudo_weight": 0.5, "box_fraction": BOX_FRACTION}
UNLABELLED_STREAM = 1000  # batch stream number of the unlabelled batches (labelled 0, validation 1, + 2 per rank)


@register_trainer("bcp")
class BCPTrainer(Trainer):
    """Mean-teacher self-training with bidirectional copy-paste between labelled and unlabelled patches."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        options = self.config.extra.get("bcp", {})
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise fail(f"unknown option(s) {sorted(unknown)} in the configuration's \"bcp\"",
                       f"use only {sorted(DEFAULTS)} (segpipe plan writes plans.json; edit it or re-plan)",
                       file=self.preprocessed)
        self.options = {k: float(options.get(k, v)) for k, v in DEFAULTS.items()}
        if not self.unlabelled_ids:
            raise fail("the 'bcp' trainer learns from unlabelled images, and this data set has none",
                       "put unlabelled images in the data set's imagesUnlabelled/ folder (<case>_0000<ending>), "
                       "re-run `segpipe onboard --force` and `segpipe preprocess`, or train with the default trainer")
        if self.regions is not None or self.cascade is not None:
            raise fail("the 'bcp' trainer supports softmax classes of a single-stage configuration only, not "
                       f"{'regions' if self.regions is not None else 'a cascade stage'}",
                       "train this configuration with the default trainer")
        self.teacher: torch.nn.Module | None = None
        self._unlabelled = None

    # ---------------------------------------------------------------- state
    def checkpoint_state(self) -> dict:
        st = super().checkpoint_state()
        st["teacher"] = None if self.teacher is None else self.teacher.state_dict()
        return st

    def restore(self, st: dict) -> None:
        super().restore(st)
        teacher = st.get("teacher")
        if teacher is not None:
            self.teacher = self._new_teacher()
            self.teacher.load_state_dict(teacher)

    def _new_teacher(self) -> torch.nn.Module:
        teacher = copy.deepcopy(self.network).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    # ---------------------------------------------------------------- steps
    def _unlabelled_batch(self) -> dict:
        if self._unlabelled is None:  # started at the current iteration: resumed runs see the same batches
            stream = BatchStream(self.preprocessed, self.unlabelled_ids, self.settings.seed, self.batch_size,
                                 self.patch, augment=self.transforms_enabled(), start=self.state["iteration"],
                                 stream=UNLABELLED_STREAM + 2 * self.rank, labelled=False)
            self._unlabelled = iter(make_loader(stream, self.settings.workers))
        return next(self._unlabelled)

    @torch.no_grad()
    def pseudo_labels(self, images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The teacher's pseudo-labels ``(B, 1, *S)`` of unlabelled ``images`` ``(B, C, *S)``: argmax, largest
        component per class, -1 where ``valid`` ``(B, 1, *S)`` is False (padding outside the image)."""
        assert self.teacher is not None
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            out = self.teacher(images)
        logits = out[0] if isinstance(out, (list, tuple)) else out
        labels = largest_components(logits.argmax(1).cpu().numpy(), self.n_classes)
        pseudo = torch.from_numpy(labels).to(self.device).unsqueeze(1)
        return torch.where(valid, pseudo, torch.full_like(pseudo, -1))

    def update_teacher(self) -> None:
        """teacher = ema * teacher + (1 - ema) * student (parameters; buffers copied)."""
        assert self.teacher is not None
        ema = self.options["ema"]
        with torch.no_grad():
            for tp, sp in zip(self.teacher.parameters(), self.network.parameters()):
                tp.mul_(ema).add_(sp.detach(), alpha=1 - ema)
            for tb, sb in zip(self.teacher.buffers(), self.network.buffers()):
                tb.copy_(sb)

    def batch_loss(self, batch: dict) -> torch.Tensor:
        if self.progress < self.options["warmup"] and self.teacher is None:
            return super().batch_loss(batch)
        if self.teacher is None:
            log.info("bcp: warm-up done at iteration %d; copy-paste self-training with a mean teacher from here",
                     self.state["iteration"])
            self.teacher = self._new_teacher()
        unlabelled = self._unlabelled_batch()
        data_l = torch.as_tensor(batch["data"]).to(self.device, non_blocking=True)
        seg_l = torch.as_tensor(batch["seg"]).to(self.device, non_blocking=True)
        data_u = torch.as_tensor(unlabelled["data"]).to(self.device, non_blocking=True)
        valid_u = torch.as_tensor(unlabelled["seg"]).to(self.device, non_blocking=True) >= 0
        pseudo = self.pseudo_labels(data_u, valid_u)
        rng = np.random.default_rng([self.settings.seed, UNLABELLED_STREAM + 1, self.state["iteration"]])
        masks = torch.from_numpy(np.stack([box_mask(self.patch, rng, self.options["box_fraction"])
                                           for _ in range(data_l.shape[0])])).to(self.device)
        images, reference, pseudo_target = mix_both_ways(data_l, seg_l, data_u, pseudo, masks)
        meta = self.batch_meta(batch)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            out = self.model(images)
            return (self.compute_loss(out, reference, meta)
                    + self.options["pseudo_weight"] * self.compute_loss(out, pseudo_target, meta))

    def train_step(self, batch: dict, lr: float) -> float:
        loss = super().train_step(batch, lr)
        if self.teacher is not None:
            self.update_teacher()
        return loss
