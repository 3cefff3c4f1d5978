"""The ``train`` section of params.yaml as one typed, validated object: :class:`TrainConfig`.

Each key's meaning is written once, in params.yaml (``tests/test_params_doc.py`` keeps the two in step);
each field declares its type and rule once (:func:`pipeline.params.setting`).
"""
from __future__ import annotations

import dataclasses

from pipeline.params import Config, ConfigError, from_mapping, setting
from train import fusions
from train.loaders import DECODES
from train.remote import source_problem
from train.methods import check_method_name, registry


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """The ``train`` section of params.yaml; every key is documented there."""

    section = "train"

    methods: list[str] = setting(["baseline", "remix"])
    modalities: list[str] = setting(["audio", "video"])
    fusion: str = setting("concat", choices=fusions.names)
    width: int = setting(16, min=1)
    epochs: int = setting(16, min=1)
    warmup_epochs: int = setting(6, min=0)
    batch_size: int = setting(32, min=1)
    lr: float = setting(1e-3, min=0.0, min_exclusive=True)
    lr_by_method: dict = setting({})
    weight_decay: float = setting(1e-4, min=0.0)
    optimizer: str = setting("adamw", choices=("adamw", "adam", "sgd"))
    schedule: str = setting("cosine", choices=("cosine", "step", "constant"))
    step_epochs: int = setting(30, min=1)
    step_gamma: float = setting(0.1, min=0.0, max=1.0, min_exclusive=True)
    alpha: float = setting(0.5, min=0.0)
    baseline_loss: str = setting("eq1", choices=("fused", "eq1"))
    gamma: float = setting(1.0, min=0.0)
    mask: str = setting("feature", choices=("feature", "input"))
    order: str = setting("sequential", choices=("sequential", "interleaved"))
    sequential_order: list[str] = setting(["video", "audio"])
    masked_norm: str = setting("train", choices=("train", "frozen"))
    masked_grad: str = setting("zero", choices=("zero", "none"))
    ablation: str = setting("full", choices=("full", "decouple", "reassemble"))
    unimodal_pred: str = setting("heads", choices=("heads", "dropout"))
    skip_masked: bool = setting(False)
    drop_last: bool = setting(False)
    shuffle_window: int = setting(0, min=0)
    guard: str = setting("none", choices=("none", "extend_warmup"))
    guard_margin: float = setting(0.1, min=0.0, max=1.0)
    guard_max_extra_epochs: int = setting(4, min=0)
    frame_size: int = setting(80, min=1)
    clip_frames: int = setting(2, min=0)
    crop: str = setting("frame", choices=("clip", "frame"))
    crop_scale_min: float = setting(0.08, min=0.0, max=1.0, min_exclusive=True)
    eval_resize: str = setting("crop", choices=("crop", "squash"))
    bn_init: str = setting("ones", choices=("ones", "normal"))
    bn_split: int = setting(1, min=1)
    workers: int = setting(2, min=0)
    device: str = setting("auto", choices=("auto", "cpu", "cuda"))
    decode: str = setting("sample", choices=DECODES)
    checkpoint_every: int = setting(50, min=0)
    nproc: int = setting(1, min=1)
    backend: str = setting("auto", choices=("auto", "gloo", "nccl"))
    scoring: str = setting("pass", choices=("pass", "online"))
    amp: str = setting("bf16", choices=("bf16", "none"))
    verify_shards: str = setting("sha256", choices=("sha256", "size"))
    source: str = setting("local")
    cache_mb: float = setting(4096.0, min=0.0, min_exclusive=True)
    fetch_threads: int = setting(4, min=1)
    fetch_retries: int = setting(4, min=0)
    fetch_timeout_s: float = setting(30.0, min=0.0, min_exclusive=True)
    grad_angle: str = setting("")
    log_test_acc: bool = setting(False)
    seed: int = setting(-1, min=-1)
    method_params: dict = setting({})

    def check(self) -> None:
        if len(self.modalities) < 2 or len(set(self.modalities)) != len(self.modalities):
            raise ConfigError("modalities", f"need >= 2 distinct modalities, got {self.modalities}")
        if not self.methods:
            raise ConfigError("methods", "empty: name at least one method")
        for m in self.methods:
            try:
                check_method_name(m, self.modalities)
            except ValueError as err:
                raise ConfigError("methods", str(err).removeprefix("train.methods: ")) from None
        if self.batch_size < self.nproc:
            raise ConfigError("batch_size", batch_vs_world(self.batch_size, self.nproc, "train.nproc"))
        if self.warmup_epochs > self.epochs:
            raise ConfigError("warmup_epochs", f"must be <= epochs ({self.epochs}), got {self.warmup_epochs}")
        if self.grad_angle and self.grad_angle not in self.modalities:
            raise ConfigError("grad_angle", f"must be \"\" (off) or one of modalities {self.modalities}, "
                              f"got {self.grad_angle!r}")
        if self.fusion == "centralnet" and self.scoring == "online" and self.unimodal_pred == "dropout":
            raise ConfigError("fusion", "centralnet needs every stage's hidden states for the fused head; "
                              "use scoring: pass or unimodal_pred: heads")
        if self.bn_split > 1 and issubclass(fusions.registry().get(self.fusion, object), fusions.AVModel):
            raise ConfigError("bn_split", f"the {self.fusion} fusion runs its encoders stage by stage: bn_split > 1 "
                              "needs a fusion head on the final features (concat, sum, ...)")
        self._check_orders()
        if (problem := source_problem(self.source)) is not None:
            raise ConfigError("source", problem)
        known = registry()
        unknown = sorted(set(self.method_params) - set(known), key=str)
        if unknown:
            raise ConfigError("method_params", f"unknown method(s) {unknown}; known: {sorted(known)}")
        for name, values in self.method_params.items():  # each method's Params, even of methods not run
            from_mapping(known[name].Params, values, f"{self.section}.method_params.{name}")


    def _check_orders(self) -> None:
        stray = [m for m in self.sequential_order if m not in self.modalities]
        if stray or len(set(self.sequential_order)) != len(self.sequential_order):
            raise ConfigError("sequential_order", f"must name distinct modalities of train.modalities "
                              f"{self.modalities}, got {self.sequential_order}")
        for name, lr in self.lr_by_method.items():
            if name not in self.methods and name not in registry():
                raise ConfigError("lr_by_method", f"{name!r} is not a method (known: {sorted(registry())})")
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
                raise ConfigError("lr_by_method", f"{name}: the learning rate must be a number > 0, got {lr!r}")

    def method_lr(self, method: str) -> float:
        """The learning rate of ``method``: ``lr_by_method[method]``, else ``lr``."""
        return float(self.lr_by_method.get(method, self.lr))

    def modality_order(self) -> list[int]:
        """Modality codes in the order of a sequential remix epoch: ``sequential_order`` first, then the rest of
        ``modalities`` in their order."""
        names = list(self.sequential_order) + [m for m in self.modalities if m not in self.sequential_order]
        return [list(self.modalities).index(m) for m in names]


def batch_vs_world(batch_size: int, world_size: int, source: str) -> str:
    """The reason of the cross-key rule global batch >= world size (each rank takes a slice of every batch)."""
    return (f"the global batch ({batch_size}) must be >= the number of processes ({world_size}, {source}): each "
            f"process takes a slice of every batch; raise train.batch_size or lower train.nproc")


def training_seed(cfg: TrainConfig, base_seed: int) -> int:
    """``train.seed``, or ``base.seed`` when it is -1."""
    return base_seed if cfg.seed < 0 else cfg.seed
