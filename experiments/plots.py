"""The workspace's training curves and confusion matrices, for every method of ``train.methods``, as static PNGs
and one HTML page that needs no network (no JavaScript): what ``dvc plots show`` drew for two named methods.

Usage (in the repository root, after ``dvc repro`` or ``make demo``)::

    python -m experiments.plots [--out dvc_plots] [--params params.yaml] [--runs runs] [--classes data/classes.txt]

writes ``<out>/index.html`` (open it in a browser) and, in the same folder:

- ``validation.png``: validation accuracy per epoch, fused and per modality (one panel each), one line per method
  (``runs/<method>/train/log.json``), the end of warm-up marked where the method logs a phase change;
- ``assigned.png``: the samples each method assigns to each modality per epoch (the methods that assign: Remix
  and its combinations);
- ``confusion.png``: each method's test confusion matrix (``runs/<method>/eval/plots/sklearn/confusion_matrix.json``).

Every title says which data the runs are on (the embedded synthetic dataset, or ``prepare.dataset`` at
``prepare.root``). A method of ``train.methods`` with no run yet is listed on the page as such. The folder is
git-ignored; the methods come from params.yaml, so a method added to ``train.methods`` is drawn with no other edit.
"""
from __future__ import annotations

import argparse
import html
import json
from pathlib import Path
from typing import Any, Sequence

from experiments.records import SYNTH_ROOT
from pipeline.params import load_params


def describe(params: dict[str, Any]) -> str:
    """The data of the workspace's runs, as :func:`experiments.records.describe_data` says it for experiments."""
    prep, synth = params.get("prepare") or {}, params.get("synth") or {}
    if prep.get("root") == SYNTH_ROOT:
        return (f"the embedded synthetic dataset ({synth.get('num_classes')} classes x "
                f"{synth.get('clips_per_class')} clips)")
    return f"{prep.get('dataset')} at {prep.get('root')}"


def read_runs(runs: Path, methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """method -> {"history": log.json rows, "confusion": [(actual, predicted), ...]} for the methods with a log."""
    out = {}
    for m in methods:
        log = runs / m / "train" / "log.json"
        if not log.is_file():
            continue
        cm = runs / m / "eval" / "plots" / "sklearn" / "confusion_matrix.json"
        pairs = json.loads(cm.read_text()) if cm.is_file() else []
        out[m] = {"history": json.loads(log.read_text()).get("history") or [],
                  "confusion": [(str(p["actual"]), str(p["predicted"])) for p in pairs]}
    return out


def warmup_end(history: Sequence[dict]) -> int | None:
    """The first epoch whose phase differs from epoch 0's (the end of warm-up), or None."""
    phases = [row.get("phase") for row in history]
    return next((row["epoch"] for row in history if phases and row.get("phase") != phases[0]), None)


def validation_figure(runs: dict[str, dict], modalities: Sequence[str], data: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["fused", *modalities]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for j, (method, run) in enumerate(runs.items()):
            rows = [r for r in run["history"] if r.get(f"val_{key}") is not None]
            ax.plot([r["epoch"] for r in rows], [100 * r[f"val_{key}"] for r in rows], marker=".", color=f"C{j}",
                    label=method)
            end = warmup_end(run["history"])
            if end is not None:
                ax.axvline(end - 0.5, color=f"C{j}", ls=":", lw=1, label=f"{method}: end of warm-up")
        ax.set_title(f"{key} (validation)", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Validation accuracy per epoch, on {data}", fontsize=11)
    fig.tight_layout()
    return fig


def assigned_figure(runs: dict[str, dict], modalities: Sequence[str], data: str):
    """One panel per method that assigns samples; None when none does."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assigning = {m: r for m, r in runs.items() if any(row.get(f"assigned_{k}") for row in r["history"]
                                                      for k in modalities)}
    if not assigning:
        return None
    fig, axes = plt.subplots(1, len(assigning), figsize=(5 * len(assigning), 3.8), squeeze=False)
    for ax, (method, run) in zip(axes[0], assigning.items()):
        for k in modalities:
            ax.plot([r["epoch"] for r in run["history"]], [r.get(f"assigned_{k}", 0) for r in run["history"]],
                    marker=".", label=f"assigned to {k}")
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("training samples")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Samples assigned to each modality per epoch, on {data}", fontsize=11)
    fig.tight_layout()
    return fig


def confusion_figure(runs: dict[str, dict], classes: Sequence[str], data: str):
    """One confusion matrix (counts, rows: actual) per method with an evaluation; None when none has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    done = {m: r["confusion"] for m, r in runs.items() if r["confusion"]}
    if not done:
        return None
    labels = list(classes) or sorted({c for pairs in done.values() for p in pairs for c in p})
    index = {c: i for i, c in enumerate(labels)}
    fig, axes = plt.subplots(1, len(done), figsize=(4.2 * len(done) + 0.5, 4.2), squeeze=False)
    for ax, (method, pairs) in zip(axes[0], done.items()):
        counts = np.zeros((len(labels), len(labels)), int)
        for actual, predicted in pairs:
            counts[index[actual], index[predicted]] += 1
        ax.imshow(counts, cmap="Blues")
        for (i, j), n in np.ndenumerate(counts):
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                    color="white" if n > counts.max() / 2 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(f"{method} ({sum(counts.diagonal())}/{len(pairs)} right)", fontsize=10)
    fig.suptitle(f"Test confusion matrices, on {data}", fontsize=11)
    fig.tight_layout()
    return fig


def page(data: str, methods: Sequence[str], drawn: Sequence[str], images: Sequence[str]) -> str:
    """The offline HTML page: the data, the methods (those without a run named), the images."""
    missing = [m for m in methods if m not in drawn]
    lines = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>avremix plots</title></head><body>",
             f"<h1>Training and test of train.methods on {html.escape(data)}</h1>",
             f"<p>methods: {html.escape(', '.join(methods))}"
             + (f"; no run yet (run <code>dvc repro</code>): {html.escape(', '.join(missing))}" if missing else "")
             + "</p>"]
    lines += [f"<p><img src='{html.escape(name)}' alt='{html.escape(name)}' style='max-width:100%'></p>"
              for name in images]
    return "\n".join([*lines, "</body></html>", ""])


def render(out: Path, params: dict[str, Any], runs_dir: Path, classes: Sequence[str] = ()) -> list[str]:
    """Write the PNGs and index.html into ``out``; the names of the images written."""
    import matplotlib.pyplot as plt

    train = params.get("train") or {}
    methods, modalities = list(train.get("methods") or []), list(train.get("modalities") or ["audio", "video"])
    data = describe(params)
    runs = read_runs(runs_dir, methods)
    out.mkdir(parents=True, exist_ok=True)
    figures = {"validation.png": validation_figure(runs, modalities, data) if runs else None,
               "assigned.png": assigned_figure(runs, modalities, data),
               "confusion.png": confusion_figure(runs, classes, data)}
    written = []
    for name, fig in figures.items():
        (out / name).unlink(missing_ok=True)  # no stale image of an earlier run
        if fig is not None:
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            written.append(name)
    (out / "index.html").write_text(page(data, methods, list(runs), written), encoding="utf-8")
    return written


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.plots", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("dvc_plots"), help="folder for index.html and the PNGs")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml (train.methods, the data)")
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="the runs folder (runs/<method>/...)")
    ap.add_argument("--classes", type=Path, default=Path("data/classes.txt"), help="class names, in label order")
    args = ap.parse_args(argv)
    classes = args.classes.read_text().split("\n") if args.classes.is_file() else []
    written = render(args.out, load_params(args.params), args.runs, [c for c in classes if c])
    print(f"written to {args.out}/index.html ({', '.join(written) or 'no run yet: dvc repro'})")


if __name__ == "__main__":
    main()
