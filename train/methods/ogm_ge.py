"""OGM-GE (Peng et al., CVPR 2022, "Balanced Multimodal Learning via On-the-fly Gradient Modulation").

Shapes: B batch, K modalities, C classes, D feature dim.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from pipeline.params import Config, ConfigError, setting
from train.methods.base import Context, Method

COEFFS = ("tanh", "tanh_shift", "inverse")
PARAM_SETS = ("all", "conv")


def modality_logits(model, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """name -> [B, C]: each modality's share of the fusion head's output (float32): ``model.modality_shares``.

    concat: the modality's block of the fused Linear plus bias / K; sum: its own Linear; decision: its own
    Linear / K. For these three the shares add up to the fused logits exactly. film, gated (not additive):
    the fusion head with every other modality's features zeroed. A head without shares (e.g. CentralNet's,
    fed by hidden layers): ValueError.
    """
    if not model.has_modality_shares:
        raise _no_shares(model)
    return model.modality_shares(features)


def _no_shares(model) -> ValueError:
    return ValueError(f"ogm_ge: no per-modality share of the {type(model.fusion).__name__} head (train.fusion "
                      f"{getattr(model, 'fusion_name', '?')!r}); OGM-GE needs a fusion head on the final features "
                      f"with modality_shares: concat, sum, decision, film or gated (or mmtm, whose head is concat)")


def discrepancy_ratio(scores: torch.Tensor) -> torch.Tensor:
    """[K] scores s -> [K] rho_m = s_m / mean_{j != m} s_j (K = 2: s_v / s_a and s_a / s_v, paper eq. 9)."""
    k = scores.numel()
    others = (scores.sum() - scores) / (k - 1)  # [K]
    return scores / others.clamp_min(torch.finfo(scores.dtype).tiny)


def coefficients(rho: torch.Tensor, alpha: float, coeff: str) -> torch.Tensor:
    """[K] rho -> [K] k: 1 where rho <= 1, else tanh: 1 - tanh(alpha * rho) (paper eq. 10);
    tanh_shift: 1 - tanh(alpha * (rho - 1)); inverse: 1 / (1 + alpha * (rho - 1)) (= 1 / rho at alpha 1)."""
    if coeff == "tanh":
        k = 1 - torch.tanh(alpha * rho)
    elif coeff == "tanh_shift":
        k = 1 - torch.tanh(alpha * (rho - 1))
    elif coeff == "inverse":
        k = 1 / (1 + alpha * (rho - 1))
    else:
        raise ValueError(f"ogm_ge: coeff {coeff!r} is not one of {COEFFS}")
    return torch.where(rho > 1, k, torch.ones_like(rho))


class OGMGE(Method):
    """OGM-GE (Peng, Wei, Deng, Wang, Hu, CVPR 2022): joint training's L_fused (heads as detached probes);
    after backward, the encoder gradients of the modality that dominates the fused prediction are scaled down,
    then Gaussian noise with the gradient's own standard deviation is added (GE).

    Per step, s_m = sum over the (global) batch of softmax(out_m)[y], out_m the modality's share of the fusion
    head (:func:`modality_logits`); rho_m = s_m / mean_{j != m} s_j (K = 2: the paper's s_v / s_a and its
    inverse); k_m = coefficient(rho_m) where rho_m > 1, else 1. Choices where the paper is ambiguous:

    * ``coeff: tanh`` is the paper's eq. 10 and the official code, 1 - tanh(alpha * rho), which jumps from 1
      to 1 - tanh(alpha) as rho crosses 1; ``tanh_shift`` is the continuous 1 - tanh(alpha * relu(rho - 1)).
    * K > 2: every modality whose score exceeds the mean of the others' is scaled (K = 2: the stronger one).
    * GE adds N(0, std(g)^2) to the gradient g of every encoder parameter of every modality (the weaker
      one too, k = 1), std of g before scaling, as the official code does; ``params: conv`` restricts both
      scaling and noise to 4-D conv weights as the official code does, ``all`` (default) is the paper's text.
    * The noise comes from a generator seeded by the run's torch seed and the global step: identical on every
      rank, reproducible on resume, and it leaves the global RNG stream untouched.
    * Modulation runs in epochs [start_epoch, end_epoch) (the official code's window is inclusive).
      s and rho are computed every step (logged as ``ogm_ratio_<m>``); ``ogm_coeff_<m>`` is the mean
      coefficient applied (1 outside the window).
    """

    name = "ogm_ge"

    @dataclasses.dataclass(frozen=True)
    class Params(Config):
        """OGM-GE settings (defaults: the official code's CREMA-D setting); every key is documented in params.yaml."""

        section = "train.method_params.ogm_ge"

        alpha: float = setting(0.8, min=0.0)
        coeff: str = setting("tanh", choices=COEFFS)
        ge: bool = setting(True)
        start_epoch: int = setting(0, min=0)
        end_epoch: int = setting(50, min=0)
        params: str = setting("all", choices=PARAM_SETS)

        def check(self) -> None:
            if self.end_epoch < self.start_epoch:
                raise ConfigError("end_epoch", f"must be >= start_epoch ({self.start_epoch}), got {self.end_epoch}")

    def __init__(self, config, modalities, num_classes, params=None):
        super().__init__(config, modalities, num_classes, params)
        if len(self.modalities) < 2:
            raise ValueError(f"ogm_ge needs >= 2 modalities, got {self.modalities}")
        self.seed = 0  # the run's torch seed (setup); seeds the GE noise with the global step
        self._reset_stats()

    def _reset_stats(self) -> None:
        k = len(self.modalities)
        self.stats = {"steps": 0, "coeff": [0.0] * k, "ratio": [0.0] * k}  # sums over this epoch's steps

    def prepare_model(self, model):
        """Unchanged; fails now (not at the first step) on a fusion head without per-modality shares."""
        if not model.has_modality_shares:
            raise _no_shares(model)
        return model

    def setup(self, ctx: Context) -> None:
        self.seed = int(torch.initial_seed()) % 2**31  # set by the trainer's seed_everything, same on every rank

    def epoch_start(self, epoch: int, ctx: Context) -> None:
        self._reset_stats()

    def active(self, epoch: int) -> bool:
        return self.params.start_epoch <= epoch < self.params.end_epoch

    @torch.no_grad()
    def step_coefficients(self, model, out, y: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, ...]:
        """([K] s summed over ranks, [K] rho, [K] k) of this step, in ``self.modalities`` order."""
        logits = modality_logits(model, out.features)
        scores = torch.stack([F.softmax(logits[m], 1).gather(1, y[:, None].long()).sum()
                              for m in self.modalities]).double()  # [K]
        scores = ctx.all_sum(scores)
        rho = discrepancy_ratio(scores)
        return scores, rho, coefficients(rho, self.params.alpha, self.params.coeff)

    def _modulated(self, encoder) -> list[torch.nn.Parameter]:
        return [p for p in encoder.parameters() if p.grad is not None and (self.params.params == "all" or p.dim() == 4)]

    @torch.no_grad()
    def modulate_gradients(self, model, out, y, m_code, ctx: Context) -> None:
        _, rho, k = self.step_coefficients(model, out, y, ctx)
        active = self.active(ctx.epoch)
        applied = k if active else torch.ones_like(k)
        self.stats["steps"] += 1
        self.stats["coeff"] = [a + b for a, b in zip(self.stats["coeff"], applied.tolist())]
        self.stats["ratio"] = [a + b for a, b in zip(self.stats["ratio"], rho.tolist())]
        if not active:
            return
        gen: dict[torch.device, torch.Generator] = {}
        for j, m in enumerate(self.modalities):
            for p in self._modulated(model.encoders[m]):
                g = p.grad
                std = g.float().std() if g.numel() > 1 else g.new_zeros((), dtype=torch.float32)
                g.mul_(applied[j].to(g.dtype))
                if self.params.ge:
                    if g.device not in gen:
                        gen[g.device] = torch.Generator(device=g.device).manual_seed(self.noise_seed(ctx.global_step))
                    noise = torch.randn(g.shape, generator=gen[g.device], device=g.device, dtype=torch.float32)
                    g.add_((noise * std).to(g.dtype))

    def noise_seed(self, global_step: int) -> int:
        """The GE noise generator's seed at ``global_step``."""
        return (self.seed * 1_000_003 + global_step) % 2**63

    def epoch_end(self, epoch: int, ctx: Context) -> dict[str, float]:
        n = self.stats["steps"]
        if n == 0:
            return {}
        return {**{f"ogm_coeff_{m}": c / n for m, c in zip(self.modalities, self.stats["coeff"])},
                **{f"ogm_ratio_{m}": r / n for m, r in zip(self.modalities, self.stats["ratio"])}}

    def state_dict(self) -> dict:
        return {"seed": self.seed, "stats": {k: (list(v) if isinstance(v, list) else v) for k, v in self.stats.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.stats = {k: (list(v) if isinstance(v, list) else v) for k, v in state["stats"].items()}
