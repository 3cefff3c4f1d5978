"""The paper's Figure 3 from DVC experiments: per epoch, (a) the samples Remix assigns to each modality,
(b) the imbalance ratio, (c) the gradient-direction discrepancy with and without reassembly.

Usage (in the repository root; the two runs of panel (c), also queued by ``experiments.grid --paper``, then the plot)::

    python -m experiments.grid --methods remix --fusions concat --seeds 0 1 2 --set train.grad_angle=audio
    python -m experiments.grid --methods remix --fusions concat --seeds 0 1 2 --set train.grad_angle=audio train.ablation=decouple
    python -m experiments.figure3 [--modality audio] [--out results/paper_tables] [--all-commits] [--records FILE]

After :mod:`experiments.tuning`, each method's runs are those at its chosen setting (``tuning.final_view``).

writes ``<out>/figure3.png`` and prints, per curve of (c), the mean angle over the remix epochs.

Curves (runs on the concat fusion; mean over seeds, a band of ± one sample std where n > 1):

- (a) ``assigned_<m>`` of remix runs with the default settings (``train.grad_angle`` aside: it measures,
  it does not change training);
- (b) ``imbalance_ratio`` of those runs and of baseline runs with the default settings;
- (c) ``grad_angle_<modality>`` (degrees) of remix runs with ``train.grad_angle: <modality>``, one curve per
  ``train.ablation`` (``full``: decoupled and reassembled into modality-pure batches; ``decouple``: the
  same masking, mixed batches). The angle is between the encoder's step gradient and the gradient of that
  modality's own loss alone on the same batch (see ``train.diagnostics.gradient_angle``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
from pathlib import Path
from typing import Iterable, Sequence

from experiments import tuning
from experiments.cells import Stat, latest_per_seed
from experiments.records import Record, cli_records, describe_data

MEASURING = ("train.grad_angle",)  # overrides that measure without changing the run


@dataclasses.dataclass(frozen=True)
class Curve:
    label: str
    epochs: list[int]
    mean: list[float]
    std: list[float]  # sample std over seeds (nan where n < 2)
    n: int  # seeds


def _plain(r: Record, method: str, allowed: Sequence[str] = MEASURING) -> bool:
    return r.method == method and r.fusion == "concat" and all(k in allowed for k in r.overrides)


def curve(label: str, records: Iterable[Record], key: str) -> Curve | None:
    """Per epoch, mean and std over the runs (one per seed, the newest) of history rows' ``key``."""
    newest = latest_per_seed(records)
    per_epoch: dict[int, list[float]] = {}
    for r in newest:
        for row in r.history:
            v = row.get(key)
            if v is not None and math.isfinite(float(v)):
                per_epoch.setdefault(int(row["epoch"]), []).append(float(v))
    if not per_epoch:
        return None
    epochs = sorted(per_epoch)
    stats = [Stat.of(per_epoch[e]) for e in epochs]
    return Curve(label, epochs, [st.mean for st in stats], [st.std for st in stats], len(newest))


def panels(records: list[Record], modalities: Sequence[str], modality: str) -> dict[str, list[Curve]]:
    """{"a": assignments, "b": imbalance ratio, "c": gradient angle}: the curves found in ``records``."""
    remix = [r for r in records if _plain(r, "remix") and r.param("train.ablation") == "full"
             and r.param("train.unimodal_pred") == "heads"]
    baseline = [r for r in records if _plain(r, "baseline")]
    out = {"a": [curve(f"remix: assigned to {m}", remix, f"assigned_{m}") for m in modalities],
           "b": [curve("baseline", baseline, "imbalance_ratio"), curve("remix", remix, "imbalance_ratio")],
           "c": []}
    for ablation, label in (("full", "remix (decouple + reassemble)"), ("decouple", "decouple only (mixed batches)")):
        runs = [r for r in records if _plain(r, "remix", (*MEASURING, "train.ablation"))
                and r.param("train.grad_angle") == modality and r.param("train.ablation") == ablation]
        out["c"].append(curve(label, runs, f"grad_angle_{modality}"))
    return {k: [c for c in v if c is not None] for k, v in out.items()}


def remix_epoch_mean(c: Curve, warmup_epochs: int) -> float:
    """The curve's mean over the epochs after warm-up (the remix phase)."""
    vals = [m for e, m in zip(c.epochs, c.mean) if e >= warmup_epochs]
    return statistics.fmean(vals) if vals else math.nan


LOG_PANELS = ("b",)  # log y axis: the imbalance ratio spans 1 to ~100 (a head near chance after epoch 0)
PAPER_DATA = "CREMA-D"  # the paper's Figure 3


def render(curves: dict[str, list[Curve]], modality: str, path: Path, warmup_epochs: int | None = None,
           data: str = "our runs") -> None:
    """:func:`figure`, written to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = figure(curves, modality, warmup_epochs, data)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure(curves: dict[str, list[Curve]], modality: str, warmup_epochs: int | None = None, data: str = "our runs"):
    """The three panels side by side; the end of warm-up as a labelled dotted line; panel (b) on a log axis; the
    figure's title says which data the curves are on (``data``: :func:`experiments.records.describe_data`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"a": "(a) samples assigned per modality", "b": "(b) imbalance ratio (val; log scale)",
              "c": f"(c) angle of the {modality} encoder's update to its own loss's (deg)"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, (key, title) in zip(axes, titles.items()):
        _draw_curves(ax, curves.get(key, []), log=key in LOG_PANELS)
        if warmup_epochs:
            ax.axvline(warmup_epochs - 0.5, color="grey", ls=":", lw=1,
                       label=f"end of warm-up ({warmup_epochs} epoch{'s' if warmup_epochs > 1 else ''})")
        if not curves.get(key):
            ax.text(0.5, 0.5, "no runs yet (see python -m experiments.figure3 --help)", ha="center",
                    transform=ax.transAxes, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.suptitle(f"Figure 3 on {data} (mean over seeds, band: ± one sample std); the paper's Figure 3 is on "
                 f"{PAPER_DATA}", fontsize=10)
    fig.tight_layout()
    return fig


def _draw_curves(ax, curves: Sequence[Curve], log: bool = False) -> None:
    """Each curve's mean per epoch and, where n > 1, a band of ± one sample std (clipped above 0 on a log axis)."""
    for c in curves:
        line, = ax.plot(c.epochs, c.mean, marker=".", label=f"{c.label} (n={c.n})")
        if c.n > 1:
            lo = [m - s for m, s in zip(c.mean, c.std)]
            hi = [m + s for m, s in zip(c.mean, c.std)]
            if log:
                lo = [max(v, m / 10) for v, m in zip(lo, c.mean)]  # no band below a tenth of the mean
            ax.fill_between(c.epochs, lo, hi, color=line.get_color(), alpha=0.2)
    if log and curves:
        ax.set_yscale("log")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.figure3", description=__doc__.split("\n\n")[0])
    ap.add_argument("--modality", default="audio", help="the strong modality whose angle panel (c) plots")
    ap.add_argument("--modalities", nargs="+", default=["audio", "video"], help="modalities of panel (a)")
    ap.add_argument("--out", default="results/paper_tables", help="folder for figure3.png")
    ap.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")
    ap.add_argument("--records", type=Path, help="read the runs from this records.json (experiments.tables "
                    "writes it) instead of `dvc exp show`")
    args = ap.parse_args(argv)
    records = cli_records("experiments.figure3", args.all_commits, args.records, read=args.records is not None)
    records = tuning.final_view(records, tuning.select(records))  # tuned: each method at its chosen setting
    curves = panels(records, args.modalities, args.modality)
    warm = [int(r.param("train.warmup_epochs")) for r in records if r.method == "remix"]
    warmup = max(set(warm), key=warm.count) if warm else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    render(curves, args.modality, out / "figure3.png", warmup, describe_data(records))
    for c in curves["c"]:
        print(f"{c.label}: mean angle over the remix epochs {remix_epoch_mean(c, warmup or 0):.1f} deg (n={c.n})")
    if not curves["c"]:
        print("panel (c) has no runs: see the grids in `python -m experiments.figure3 --help`")
    print(f"written to {out}/figure3.png")


if __name__ == "__main__":
    main()
