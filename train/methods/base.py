"""The hooks a training method plugs into the one trainer (``train/trainer.py``); the defaults are joint training.

Shapes: B batch, K modalities, C classes, D feature dim, N samples of the training split.

The trainer owns the loop, the data, DDP, resume and checkpoint selection; it names no method and
no modality. A method changes only what its paper changes, through these hooks, called in this order::

    model = method.prepare_model(build_model(...))      # also in evaluate: e.g. MLA's shared head
    method.setup(ctx)                                    # once, after the loaders exist (not on resume)
    per epoch, at its first step (a resumed epoch does not repeat them):
        ctx.phase = method.phase(epoch)                  # "warmup", or e.g. Remix's "remix"
        method.epoch_start(epoch, ctx)                   # e.g. PMR prototypes, G-Blend weights
        plan = method.plan(epoch, ctx)                   # the data hook: each sample's modality and copies
    per batch:
        for keep in method.substeps(keep, ctx):          # one optimizer step each (default: one)
            out  = method.forward(model, inputs, keep=..., mask=..., skip_masked=..., ctx=ctx)
            loss = method.loss(model, out, y, m_code, ctx)
            loss.backward(); encoders masked for the whole step get method.masked_gradient(ctx); averaged over ranks
            method.modulate_gradients(model, out, y, m_code, ctx)   # e.g. OGM-GE, Greedy; same on every rank
            optimizer.step(); method.after_step(model, out, batch, ctx)
    per epoch end: row.update(method.epoch_end(epoch, ctx)); validation;
        method.selection_metric(val_acc) picks the checkpoint; method.validated(epoch, val_acc, ctx)
    inference (validation, test, scoring): method.fused_logits(model, out, inputs)

Data Remixing is such a method (``train/methods/remix.py``): its ``plan`` scores and assigns every
sample, and "X + Remix" is a class deriving from :class:`~train.methods.remix.Remixing` and X. Every hook
must be deterministic given the torch / numpy RNG states the trainer saves, and give the same result on
every rank (reduce per-rank statistics with ``ctx.all_sum``); whatever a method keeps between steps goes
into :meth:`state_dict` so an exact resume restores it.

Per-method settings: a dataclass ``Params`` on the class; its values come from
``train.method_params.<name>`` in params.yaml (unknown or mistyped keys fail naming the key).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from train.losses import joint_loss
from train.models import AVModel, ModelOutput


@dataclasses.dataclass
class EpochPlan:
    """What each training sample contributes to one epoch (the data hook's answer)."""

    modality: np.ndarray | None = None  # [N] the one modality each sample keeps (0..K-1), None: every modality
    copies: np.ndarray | None = None  # [N] copies of each sample (>= 0), None: once each
    pure: bool = True  # with ``modality``: modality-pure batches (False: mixed batches)
    masked: bool = True  # with ``modality``: the other modalities are masked (False: every modality kept)


@dataclasses.dataclass
class Context:
    """What a method may use besides the model. Built by the trainer; ``epoch``, ``step``, ``phase`` kept current."""

    config: Any  # the TrainConfig
    modalities: list[str]  # encoder names, in keep-mask column order
    num_classes: int
    device: torch.device
    model: AVModel
    n_train: int  # N, samples of the training split
    train_labels: np.ndarray  # [N] labels of the training split, in split order
    loaders: dict[str, Any] = dataclasses.field(default_factory=dict)  # "val", "train_eval": whole split, every modality, no augmentation
    to_inputs: Callable[[dict], dict[str, torch.Tensor]] | None = None  # a loader batch -> name -> input on the device
    all_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t  # sum a tensor over ranks (identity on one process)
    merge_disjoint: Callable[[np.ndarray], np.ndarray] = lambda a: a  # merge per-rank arrays filled at disjoint rows (NaN elsewhere)
    world_size: int = 1
    is_main: bool = True  # rank 0 (writes files)
    work_dir: Path | None = None  # the run's scratch folder; its files (but resume.pt) become the outputs
    fingerprint: str = ""  # the feature set's (checkpoint.dataset_fingerprint)
    epoch: int = 0  # the current epoch
    step: int = 0  # the step within the epoch
    global_step: int = 0  # batches trained so far
    steps_per_epoch: int = 0  # steps of a full epoch (approximate with copies)
    phase: str = "warmup"  # this epoch's phase (Method.phase)


class Method:
    """Joint training: L = L_fused, the unimodal heads as linear probes on detached features (the baseline)."""

    name: ClassVar[str] = "baseline"
    expands: ClassVar[bool] = False  # plan() may return copies: the cosine schedule then follows epoch progress
    listed: ClassVar[bool] = True  # registered under `name` (False: built another way, like only_<modality>)

    @dataclasses.dataclass(frozen=True)
    class Params:
        """This method's settings (none)."""

    def __init__(self, config, modalities: list[str], num_classes: int, params: "Method.Params | None" = None):
        self.config = config
        self.modalities = list(modalities)
        self.num_classes = num_classes
        self.params = params if params is not None else self.Params()

    # -- model --------------------------------------------------------------------------------
    def prepare_model(self, model: AVModel) -> AVModel:
        """Change the freshly built model (e.g. share one head); called by the trainer and by evaluate."""
        return model

    # -- once / per epoch ----------------------------------------------------------------------
    def setup(self, ctx: Context) -> None:
        """Called once before training (not again on resume: then load_state_dict follows)."""

    def phase(self, epoch: int) -> str:
        """The name of ``epoch``'s phase (logged; ``ctx.phase``)."""
        return "warmup"

    def epoch_start(self, epoch: int, ctx: Context) -> None:
        """Called at the start of every epoch, before its first step."""

    def plan(self, epoch: int, ctx: Context) -> EpochPlan:
        """The data hook: which modality each training sample keeps and how many copies it has this epoch."""
        return EpochPlan()

    def epoch_end(self, epoch: int, ctx: Context) -> dict[str, float]:
        """Extra metrics of the epoch (logged with the trainer's row; finite floats)."""
        return {}

    def validated(self, epoch: int, acc: dict[str, float], ctx: Context) -> None:
        """Called after the epoch's validation with its accuracies ("fused" and each modality)."""

    def selection_metric(self, acc: dict[str, float]) -> float:
        """The validation number the checkpoint is selected on (higher is better)."""
        return acc["fused"]

    def summary(self) -> dict:
        """Extra entries of the run's log.json."""
        return {}

    # -- per step ------------------------------------------------------------------------------
    def masking(self) -> tuple[str, bool]:
        """(mask, skip_masked) for the model: where masked modalities are zeroed, and whether an encoder masked
        for the whole step is skipped (not run, grad None)."""
        return self.config.mask, self.config.skip_masked and self.config.mask == "input"

    def masked_gradient(self, ctx: Context) -> str:
        """The gradient of an encoder masked for the whole step: ``none`` (grad None: the optimizer skips it, as
        for a module outside the step's graph) or ``zero`` (a zero gradient: Adam's moments and L2 decay apply)."""
        return "none"

    def substeps(self, keep: torch.Tensor, ctx: Context) -> list[torch.Tensor]:
        """[B, K] keep masks, one optimizer step each on the same batch (default: one step with ``keep``)."""
        return [keep]

    def forward(self, model: AVModel, inputs: dict[str, torch.Tensor], *, keep: torch.Tensor | None, mask: str,
                skip_masked: bool, ctx: Context) -> ModelOutput:
        return model(inputs, keep=keep, mask=mask, skip_masked=skip_masked)

    def loss(self, model: AVModel, out: ModelOutput, y: torch.Tensor, m_code: torch.Tensor,
             ctx: Context) -> torch.Tensor:
        """The step's loss; y [B] labels, m_code [B] assigned modality (-1: all present). Default: L_fused, the
        unimodal heads as probes on detached features (the comparison methods' official base loss; the
        ``baseline`` method follows ``train.baseline_loss``)."""
        return joint_loss(model, out, y, self.config, "fused")

    def modulate_gradients(self, model: AVModel, out: ModelOutput, y: torch.Tensor, m_code: torch.Tensor,
                           ctx: Context) -> None:
        """Change ``p.grad`` in place after backward and the ranks' averaging, before the optimizer step."""

    def after_step(self, model: AVModel, out: ModelOutput, batch: dict, ctx: Context) -> None:
        """Called after the optimizer step with the step's output and its loader batch ("index": split positions)."""

    # -- inference -----------------------------------------------------------------------------
    def fused_logits(self, model: AVModel, out: ModelOutput, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, C] the method's multimodal prediction (validation, test); default the fusion head's."""
        return out.fused

    # -- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Whatever the method carries between steps and epochs (saved in resume.pt)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"method {self.name}: unexpected saved state {sorted(state)}")
