"""MLA: Multimodal representation learning by alternating unimodal adaptation (Zhang, Latham, Sheng, CVPR 2024).

Shapes: B batch, K modalities, C classes, D feature dim.

One Linear(D, C) head shared by every modality; every batch takes K optimizer steps, one per modality, each
training that modality's encoder and the shared head on that modality alone (so every encoder sees every sample
each epoch: expansion factor K); the head's weight gradient is projected (OWM, Zeng et al. 2019) away from the
feature subspace of the other modalities so it does not forget them; inference fuses the K unimodal outputs of the
shared head, weighted by their prediction entropy. ``mla_remix`` is MLA combined with Data Remixing
(``train/methods/remix.py``) after warm-up: each remix batch trains its assigned modality once (factor 1).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from pipeline.params import Config, setting
from train.methods.base import Context, Method
from train.methods.remix import Remixing

FEATURE_STATS = ("mean", "covariance")
STEPS_PER_BATCH = ("all", "one")  # K optimizer steps per batch, one per modality (paper) | one step, modalities in turn


def entropy_weights(logits: list[torch.Tensor]) -> torch.Tensor:
    """[B, K] fusion weights from K x [B, C] logits (MLA's test-time fusion).

    e_k = -sum_c p_kc log p_kc with p_k = softmax(logits_k) (per sample, over classes);
    w_k = exp(max_j e_j - e_k) / sum_j exp(max_j e_j - e_j), i.e. softmax_k(-e_k): lower entropy, higher weight.
    """
    logp = torch.stack([F.log_softmax(x.float(), dim=1) for x in logits], dim=1)  # [B, K, C]
    ent = -(logp.exp() * logp).sum(-1)  # [B, K]
    gap = ent.max(dim=1, keepdim=True).values - ent  # [B, K], >= 0
    return gap.exp() / gap.exp().sum(dim=1, keepdim=True)  # [B, K]


def owm_projector(r: torch.Tensor, alpha: float) -> torch.Tensor:
    """[D, D] P = alpha (R + alpha I)^-1 = I - A (A^T A + alpha I)^-1 A^T, for R = A A^T [D, D] (any columns A)."""
    eye = torch.eye(r.shape[0], dtype=r.dtype, device=r.device)
    return alpha * torch.linalg.inv(r + alpha * eye)


class MLA(Method):
    """MLA (Zhang, Latham, Sheng, CVPR 2024): alternating unimodal adaptation with a shared head.

    - ``prepare_model``: every modality's unimodal head becomes the same Linear(D, C) (the first modality's);
      the fusion head is left unused (no gradient, never moved).
    - ``steps_per_batch: all`` (the paper and its official code): :meth:`substeps` gives each batch K keep masks,
      the k-th keeping modality k only, in ``train.modalities`` order: K optimizer steps on the same batch, each
      training one modality. ``one`` (the earlier form, kept as an option): one step per batch, training modality
      ``ctx.global_step mod K``, so each encoder sees every K-th batch (expansion factor 1). In ``mla_remix``'s
      remix phase either way each (modality-pure) batch takes one step training its assigned modality.
      Only the step's encoder runs; L = CE(head(h_k), y). The other encoders end the step with grad None.
    - Gradient modification (the paper's, after OWM): for modality k the head's weight gradient G [C, D] becomes
      G P_k, P_k = I - A (A^T A + alpha I)^-1 A^T, the columns of A being the features seen so far of every
      modality j != k. We keep R_j = A_j A_j^T [D, D] per modality (state_dict) and use the identity
      P_k = alpha (sum_{j != k} R_j + alpha I)^-1: the OWM recursion P <- P - P s s^T P / (alpha + s^T P s) is
      this same matrix updated one column at a time (Sherman-Morrison); the sums make batch updates and the union
      of several modalities' subspaces exact. After the projection, R_k += the step's feature statistic,
      reduced over ranks: ``mean``: s s^T with s the global batch's mean feature (one column per step, as
      the official code does); ``covariance``: mean over the global batch of h h^T (one column per sample, scaled
      by 1/sqrt(B) so one step adds the same order of mass as ``mean``). With K steps per batch, modality k's
      step is projected away from the features the earlier modalities of the same batch have just added.
    - Logged per epoch (:meth:`epoch_end`): ``mla_steps_<m>``, the optimizer steps that trained modality m, and
      ``expansion`` = optimizer steps / batches (K with ``all``, 1 with ``one`` and in remix epochs).

    Learning rate: the trainer's schedule (``train.schedule``) is stepped once per batch, after all of the batch's
    optimizer steps: it counts batches, not optimizer steps. So the K steps of a batch share one rate, and ``all``
    takes K times the optimizer steps of ``one`` along the same per-epoch curve (the cosine reaches zero after
    ``train.epochs`` epochs either way). The official code (SGD, a StepLR stepped once per epoch: x0.1 at epoch 70)
    also gives the K steps of a batch one rate, but keeps it constant within an epoch and follows its own schedule;
    here MLA runs under the trainer's schedule, like every method it is compared with.

    Choices where the paper or its code is ambiguous: alpha is constant (the official code decays it within each
    epoch) and P is not renormalised (the code divides P by its Frobenius norm, which only rescales the step); the
    official code keeps one P for every modality and adds the step's own feature to it before projecting, we
    project away from the other modalities' features only; only the head's weight is projected, its bias is trained
    freely (as in the official code). With AdamW the per-coordinate step scaling moves the update slightly off the
    projected span (OWM assumes plain SGD). Test-time fusion (the paper's): fused = sum_k w_k * logits_k with the
    entropy weights of :func:`entropy_weights`, fusing logits as the official code does (before its softmax).
    Works for any K >= 2. Needs ``unimodal_pred: heads`` (the fusion head is untrained) and, for ``mla_remix``,
    ``ablation: full``. With ``scoring: online`` a step scores only the modality it trains (with ``one`` some
    samples lack a modality's KL, and Remix falls back to a scoring pass; with ``all`` warm-up scores every one).
    """

    name = "mla"

    @dataclasses.dataclass(frozen=True)
    class Params(Config):
        """MLA settings (Zhang, Latham, Sheng, CVPR 2024): its gradient modification and optimizer steps per batch;
        every key is documented in params.yaml."""

        section = "train.method_params.mla"

        gradient_modification: bool = setting(True)
        alpha: float = setting(0.1, min=0.0, min_exclusive=True)
        feature_stat: str = setting("mean", choices=FEATURE_STATS)
        steps_per_batch: str = setting("all", choices=STEPS_PER_BATCH)

    def __init__(self, config, modalities, num_classes, params=None):
        super().__init__(config, modalities, num_classes, params)
        if len(self.modalities) < 2:
            raise ValueError(f"{self.name}: needs >= 2 modalities, got {self.modalities}")
        if getattr(config, "unimodal_pred", "heads") != "heads":
            raise ValueError(f"{self.name}: train.unimodal_pred must be 'heads' (MLA trains no fusion head; its unimodal "
                             f"predictions are the shared head's), got {config.unimodal_pred!r}")
        self.r: torch.Tensor | None = None  # [K, D, D] float64: R_j = sum of feature outer products of modality j
        self.steps = [0] * len(self.modalities)  # optimizer steps of each modality this epoch
        self.batches = 0  # batches this epoch (substeps calls)

    # -- model --------------------------------------------------------------------------------
    def prepare_model(self, model):
        """Tie every unimodal head to the first modality's Linear(D, C) (one parameter set)."""
        shared = model.heads[model.modalities[0]]
        for m in model.modalities[1:]:
            model.heads[m] = shared
        return model

    # -- per epoch ------------------------------------------------------------------------------
    def epoch_start(self, epoch: int, ctx: Context) -> None:
        super().epoch_start(epoch, ctx)
        self.steps, self.batches = [0] * len(self.modalities), 0

    def epoch_end(self, epoch: int, ctx: Context) -> dict[str, float]:
        """``mla_steps_<m>``: optimizer steps that trained m; ``expansion``: optimizer steps / batches (0: none)."""
        row = {f"mla_steps_{m}": float(n) for m, n in zip(self.modalities, self.steps)}
        expansion = sum(self.steps) / self.batches if self.batches else 0.0
        return {**super().epoch_end(epoch, ctx), **row, "expansion": expansion}

    # -- per step ------------------------------------------------------------------------------
    def substeps(self, keep: torch.Tensor, ctx: Context) -> list[torch.Tensor]:
        """``all``: K [B, K] masks, the k-th keeping modality k only (one optimizer step per modality, in order);
        ``one``, and every remix batch: the batch's own mask (one step)."""
        self.batches += 1
        if ctx.phase == "remix" or self.params.steps_per_batch == "one":
            return [keep]
        parts = []
        for k in range(len(self.modalities)):
            only = torch.zeros_like(keep)
            only[:, k] = True
            parts.append(only)
        return parts

    def modality_of_step(self, keep: torch.Tensor | None, ctx: Context) -> int:
        """The index of the modality this step trains: the one column ``keep`` keeps (``all``'s substeps, a remix
        batch), or with ``keep`` None (every modality kept: the ``one`` form) ``ctx.global_step mod K``."""
        if keep is None:
            if ctx.phase == "remix":
                raise ValueError(f"{self.name}: a remix batch must keep one modality, got one that keeps all")
            return ctx.global_step % len(self.modalities)
        kept = [j for j in range(keep.shape[1]) if bool(keep[:, j].all())]
        if len(kept) != 1 or bool(keep.sum(1).ne(1).any()):
            raise ValueError(f"{self.name}: a step must train one modality (remix batches modality-pure), got kept "
                             f"columns {keep.any(0).tolist()}")
        return kept[0]

    def forward(self, model, inputs, *, keep, mask, skip_masked, ctx):
        """Run only the step's modality k (input masking, the others skipped: zero features, no gradient);
        ``out.raw`` holds just k, ``out.fused`` is the shared head on h_k."""
        k = self.modality_of_step(keep, ctx)
        x = inputs[self.modalities[k]]
        only = torch.zeros(x.shape[0], len(self.modalities), dtype=torch.bool, device=x.device)  # [B, K]
        only[:, k] = True
        out = model({self.modalities[k]: x}, keep=only, mask="input", skip_masked=True)
        return dataclasses.replace(out, fused=out.unimodal[self.modalities[k]])

    def _trained(self, out) -> int:
        """The index of the modality ``out`` (from :meth:`forward`) trained."""
        if len(out.raw) != 1:
            raise ValueError(f"{self.name}: expected the output of one modality, got {sorted(out.raw)}")
        return self.modalities.index(next(iter(out.raw)))

    def loss(self, model, out, y, m_code, ctx):
        """CE of the shared head on the step's modality alone."""
        return F.cross_entropy(out.unimodal[self.modalities[self._trained(out)]].float(), y)

    def modulate_gradients(self, model, out, y, m_code, ctx):
        """Grad None for the untrained encoders; the head's weight gradient times P_k; then R_k += the step's
        feature statistic (reduced over ranks, so identical everywhere)."""
        k = self._trained(out)
        self.steps[k] += 1
        for j, m in enumerate(self.modalities):
            if j != k:
                for p in model.encoders[m].parameters():
                    p.grad = None
        if not self.params.gradient_modification:
            return
        h = out.raw[self.modalities[k]].detach().float()  # [B, D]
        d = h.shape[1]
        if self.r is None:
            self.r = torch.zeros(len(self.modalities), d, d, dtype=torch.float64)
        if self.r.device != h.device:
            self.r = self.r.to(h.device)
        w = model.heads[self.modalities[k]].weight
        others = torch.cat([self.r[:k], self.r[k + 1:]]).sum(0)  # [D, D]
        if w.grad is not None and bool(others.any()):
            w.grad.copy_((w.grad.double() @ owm_projector(others, self.params.alpha)).to(w.grad.dtype))  # [C, D]
        n = torch.tensor([float(h.shape[0])], device=h.device)
        if self.params.feature_stat == "mean":
            tot = ctx.all_sum(torch.cat([h.sum(0), n]))  # [D + 1]
            s = tot[:d].double() / tot[d].double()  # [D]
            self.r[k] += torch.outer(s, s)
        else:
            tot = ctx.all_sum(torch.cat([(h.T @ h).reshape(-1), n]))  # [D * D + 1]
            self.r[k] += tot[:-1].double().view(d, d) / tot[-1].double()

    # -- inference -----------------------------------------------------------------------------
    def fused_logits(self, model, out, inputs):
        """[B, C] sum_k w_k * logits_k, w from the unimodal entropies (:func:`entropy_weights`)."""
        logits = [out.unimodal[m].float() for m in self.modalities]  # K x [B, C]
        w = entropy_weights(logits)  # [B, K]
        return (torch.stack(logits, dim=1) * w[..., None]).sum(1)  # [B, C]

    # -- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"r": None if self.r is None else self.r.detach().cpu().clone(), "steps": list(self.steps),
                "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        unknown = sorted(set(state) - {"r", "steps", "batches"})
        if unknown:
            raise ValueError(f"method {self.name}: unexpected saved state {unknown}")
        self.r = None if state.get("r") is None else state["r"].clone()
        self.steps = list(state.get("steps", [0] * len(self.modalities)))
        self.batches = int(state.get("batches", sum(self.steps)))  # a state of the one-step form: one per batch


class MLARemix(Remixing, MLA):
    """MLA + Data Remixing (the paper's factor-1 variant): warm-up as MLA (``steps_per_batch``), then each remix
    batch (modality-pure, from the KL assignment) takes one optimizer step training its assigned modality, with the
    same shared head, projection and fusion. The loss stays MLA's, CE(head(h_k), y) (there is no fusion head to
    train, so no L_fused term)."""

    name = "mla_remix"
    loss = MLA.loss
    masked_gradient = MLA.masked_gradient  # every step runs one encoder alone, the others outside the graph (None)

    def __init__(self, config, modalities, num_classes, params=None):
        super().__init__(config, modalities, num_classes, params)
        if getattr(config, "ablation", "full") != "full":
            raise ValueError(f"{self.name}: train.ablation must be 'full' (each remix batch must be modality-pure and "
                             f"masked, so that it names the one modality to train), got {config.ablation!r}")
