"""Greedy: balanced multi-modal learning by conditional learning speeds (Wu, Jastrzebski, Cho, Geras, ICML 2022)."""
from __future__ import annotations

import dataclasses
import math

import torch

from pipeline.params import Config, setting
from train.fusions.mmtm import MMTMModel
from train.methods.base import Method


class Greedy(Method):
    """"Characterizing and Overcoming the Greedy Nature of Learning in Multi-modal Deep Neural Networks"
    (Wu, Jastrzebski, Cho, Geras, ICML 2022), on the MMTM model (``train.fusion: mmtm``); K >= 2.

    The conditional utilization rate is estimated by the conditional learning speed. With
    mu(theta) = ||grad_theta L||^2 / ||theta||^2 per optimizer step (sums over a parameter group),
    modality k's speed is

        s_k = log10( sum_t mu(theta_bypass_k) / sum_t mu(theta_k) )

    theta_k: modality k's own trunk (``model.encoders[k]``); theta_bypass_k: the cross-modal MMTM
    weights feeding k's excitation (every stage's shared squeeze FC and k's excitation FC). The sums
    run over every normal (not re-balancing) step since the start of training (the authors' code).
    A large s_k means the model learns through the cross-modal path into k faster than from k's own
    trunk: k's own path is the slow one. When max_k s_k - min_k s_k > ``threshold`` (from
    ``start_epoch`` on), the next ``window`` steps are re-balancing steps for k = argmax s_k: the MMTM
    excitation of k is replaced by its running average (mean over all training forwards so far of the
    computed excitation, per stage and channel), so no cross-modal information flows into k and only
    k's own features can serve its path; the other modalities' MMTM stay live. For two modalities
    this is the authors' rule (d = s_0 - s_1, |d| > epsilon, re-balance the one with the larger s).

    Choices where the paper is ambiguous: the speed definitions, the running-average replacement,
    epsilon = 0.01 and Q = 5 steps follow the authors' released code (their ``starting_epoch = 2``
    counts epochs from 1: ``start_epoch = 1`` here); the loss is joint training's L_fused (heads as probes) on the
    concat fusion head (theirs: the mean of per-branch logits). Gradients are averaged over ranks
    before ``modulate_gradients``, so the speeds are identical on every rank; the excitation running
    average sums the ranks' batches with ``ctx.all_sum``.
    """

    name = "greedy"

    @dataclasses.dataclass(frozen=True)
    class Params(Config):
        """Greedy's switch (authors' code: epsilon = 0.01, window = 5, start after the first epoch); every key is
        documented in params.yaml."""

        section = "train.method_params.greedy"

        threshold: float = setting(0.01, min=0.0)
        window: int = setting(5, min=1)
        start_epoch: int = setting(1, min=0)

    def __init__(self, config, modalities, num_classes, params=None):
        super().__init__(config, modalities, num_classes, params)
        if getattr(config, "fusion", None) != "mmtm":
            raise ValueError(f"method greedy needs train.fusion: mmtm (its learning speeds are measured on the MMTM "
                             f"weights), got train.fusion: {getattr(config, 'fusion', None)!r}")
        k = len(self.modalities)
        self.m_main = [0.0] * k  # sum_t mu(theta_k)
        self.m_bypass = [0.0] * k  # sum_t mu(theta_bypass_k)
        self.speeds = [0.0] * k  # s_k after the last normal step
        self.caring = -1  # index of the modality under re-balancing (-1: normal steps)
        self.left = 0  # re-balancing steps left
        self.avg_scales: dict[str, list[torch.Tensor]] | None = None  # name -> per MMTM stage [C_i] running mean (cpu, float64)
        self.avg_count = [0.0] * k  # samples in the running mean, per modality
        self.epoch_steps = 0  # steps of this epoch
        self.epoch_rebalance = [0] * k  # re-balancing steps of this epoch, per caring modality

    # -- model ---------------------------------------------------------------------------------
    def prepare_model(self, model):
        if not isinstance(model, MMTMModel):
            raise ValueError(f"method greedy needs the MMTM model (train.fusion: mmtm), got {type(model).__name__}")
        return model

    # -- per epoch -----------------------------------------------------------------------------
    def epoch_start(self, epoch, ctx):
        self.epoch_steps, self.epoch_rebalance = 0, [0] * len(self.modalities)

    def epoch_end(self, epoch, ctx):
        steps = max(self.epoch_steps, 1)
        return {**{f"greedy_speed_{m}": float(s) for m, s in zip(self.modalities, self.speeds)},
                "greedy_rebalance_frac": sum(self.epoch_rebalance) / steps,
                **{f"greedy_rebalance_{m}": n / steps for m, n in zip(self.modalities, self.epoch_rebalance)}}

    # -- per step ------------------------------------------------------------------------------
    def forward(self, model, inputs, *, keep, mask, skip_masked, ctx):
        override = None
        if self.caring >= 0:
            m = self.modalities[self.caring]
            override = {m: [t.to(ctx.device, torch.float32) for t in self.avg_scales[m]]}
        return model(inputs, keep=keep, mask=mask, skip_masked=skip_masked, excitation_override=override)

    def modulate_gradients(self, model, out, y, m_code, ctx):
        self._update_average(out, ctx)
        self.epoch_steps += 1
        if self.caring >= 0:  # this step was a re-balancing step: no speed update (authors' code)
            self.epoch_rebalance[self.caring] += 1
            self.left -= 1
            if self.left <= 0:
                self.caring = -1
            return
        main, bypass = self.step_mu(model)
        for k in range(len(self.modalities)):
            self.m_main[k] += main[k]
            self.m_bypass[k] += bypass[k]
        self.speeds = [math.log10(b / a) if a > 0 and b > 0 else 0.0 for a, b in zip(self.m_main, self.m_bypass)]
        hi = max(range(len(self.speeds)), key=lambda k: (self.speeds[k], -k))
        lo = min(range(len(self.speeds)), key=lambda k: (self.speeds[k], k))
        if ctx.epoch >= self.params.start_epoch and self.speeds[hi] - self.speeds[lo] > self.params.threshold:
            self.caring, self.left = hi, self.params.window

    def step_mu(self, model) -> tuple[list[float], list[float]]:
        """This step's mu(theta_k) and mu(theta_bypass_k), k in modality order (a missing gradient counts as 0)."""
        def sums(params):  # [2]: (sum of grad^2, sum of weight^2), on the parameters' device
            params = list(params)
            zero = torch.zeros((), dtype=torch.float64, device=params[0].device)
            g = sum((p.grad.detach().double().square().sum() for p in params if p.grad is not None), zero)
            w = sum((p.detach().double().square().sum() for p in params), zero)
            return torch.stack([g, w])

        rows = []
        for m in self.modalities:
            rows.append(sums(model.encoders[m].parameters()))
            rows.append(sums(p for mod in model.mmtm.values()
                             for p in [*mod.squeeze.parameters(), *mod.excite[m].parameters()]))
        vals = torch.stack(rows).tolist()  # [2K, 2]: (grad^2, weight^2)
        mu = [g / w if w > 0 else 0.0 for g, w in vals]
        return mu[0::2], mu[1::2]

    def _update_average(self, out, ctx) -> None:
        """Fold this step's excitations (summed over the batch and the ranks) into the running mean."""
        scales = getattr(out, "scales", {})
        mods = [m for m in self.modalities if m in scales]
        if not mods:
            return
        dev = scales[mods[0]][0].device
        parts, counts = [], []
        for m in self.modalities:
            if m in scales:
                parts += [s.double().sum(0) for s in scales[m]]  # [C_i] sums over the batch
                counts.append(float(scales[m][0].shape[0]))
            else:
                counts.append(0.0)
        flat = ctx.all_sum(torch.cat([*parts, torch.tensor(counts, dtype=torch.float64, device=dev)]))
        flat = flat.cpu()
        total = flat[-len(counts):].tolist()
        if self.avg_scales is None:
            self.avg_scales = {}
        offset = 0
        for k, m in enumerate(self.modalities):
            if m not in scales:
                continue
            n_old, n_new = self.avg_count[k], total[k]
            new = []
            for i, s in enumerate(scales[m]):
                c = s.shape[1]
                batch_sum = flat[offset:offset + c]
                offset += c
                old = self.avg_scales[m][i] if m in self.avg_scales else torch.zeros(c, dtype=torch.float64)
                new.append((old * n_old + batch_sum) / max(n_old + n_new, 1e-12))
            self.avg_scales[m] = new
            self.avg_count[k] = n_old + n_new

    # -- resume --------------------------------------------------------------------------------
    def state_dict(self):
        return {"m_main": list(self.m_main), "m_bypass": list(self.m_bypass), "speeds": list(self.speeds),
                "caring": self.caring, "left": self.left, "avg_count": list(self.avg_count),
                "avg_scales": None if self.avg_scales is None else
                {m: [t.clone() for t in v] for m, v in self.avg_scales.items()},
                "epoch_steps": self.epoch_steps, "epoch_rebalance": list(self.epoch_rebalance)}

    def load_state_dict(self, state):
        self.m_main, self.m_bypass, self.speeds = list(state["m_main"]), list(state["m_bypass"]), list(state["speeds"])
        self.caring, self.left, self.avg_count = int(state["caring"]), int(state["left"]), list(state["avg_count"])
        self.avg_scales = None if state["avg_scales"] is None else \
            {m: [t.clone() for t in v] for m, v in state["avg_scales"].items()}
        self.epoch_steps, self.epoch_rebalance = int(state["epoch_steps"]), list(state["epoch_rebalance"])
