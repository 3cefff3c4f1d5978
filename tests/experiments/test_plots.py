"""experiments.plots: every method of train.methods drawn, offline, into the git-ignored dvc_plots/; dvc.yaml names
no method in a plot definition."""
from __future__ import annotations

import json
import subprocess

import matplotlib
import yaml

from experiments import plots
from tests.conftest import REPO

matplotlib.use("Agg")

METHODS = ["baseline", "remix", "random_split"]  # the last: a method added as the README says, named nowhere else


def _run(runs, method, val, phases, assigned=(0, 0), confusion=(("a", "a"), ("b", "a"))):
    (runs / method / "train").mkdir(parents=True)
    history = [{"epoch": e, "phase": p, "val_fused": v, "val_audio": v / 2, "val_video": v / 3,
                "assigned_audio": assigned[0] * e, "assigned_video": assigned[1] * e}
               for e, (v, p) in enumerate(zip(val, phases))]
    (runs / method / "train" / "log.json").write_text(json.dumps({"history": history}))
    cm = runs / method / "eval" / "plots" / "sklearn"
    cm.mkdir(parents=True)
    (cm / "confusion_matrix.json").write_text(json.dumps([{"actual": a, "predicted": p} for a, p in confusion]))


def test_every_method_of_train_methods_is_drawn_offline(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "baseline", [0.5, 0.6, 0.7], ["warmup"] * 3)
    _run(runs, "remix", [0.5, 0.6, 0.8], ["warmup", "remix", "remix"], assigned=(3, 2))
    _run(runs, "random_split", [0.4, 0.5, 0.6], ["warmup", "split", "split"], assigned=(1, 1))
    params = {"prepare": {"root": "data/raw", "dataset": "cremad"}, "synth": {"num_classes": 2, "clips_per_class": 4},
              "train": {"methods": [*METHODS, "not_run_yet"], "modalities": ["audio", "video"]}}
    written = plots.render(tmp_path / "dvc_plots", params, runs, ["a", "b"])
    assert written == ["validation.png", "assigned.png", "confusion.png"]
    page = (tmp_path / "dvc_plots" / "index.html").read_text()
    assert "<script" not in page and "http" not in page  # nothing loaded from the network
    assert "no run yet (run <code>dvc repro</code>): not_run_yet" in page
    assert "on the embedded synthetic dataset (2 classes x 4 clips)" in page
    run = plots.read_runs(runs, METHODS)
    fig = plots.validation_figure(run, ["audio", "video"], plots.describe(params))
    assert len(fig.axes) == 3 and "on the embedded synthetic dataset (2 classes x 4 clips)" in fig._suptitle.get_text()
    for ax in fig.axes:  # fused, audio, video: one line per method, and where a method changes phase, its warm-up end
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == ["baseline", "remix", "remix: end of warm-up", "random_split", "random_split: end of warm-up"]
    assert [ax.get_title() for ax in plots.assigned_figure(run, ["audio", "video"], "x").axes] == ["remix", "random_split"]
    assert [ax.get_title() for ax in plots.confusion_figure(run, ["a", "b"], "x").axes] == [
        f"{m} (1/2 right)" for m in METHODS]
    real = {**params, "prepare": {"root": "/data/CREMA-D", "dataset": "cremad"}}
    assert plots.describe(real) == "cremad at /data/CREMA-D"


def test_dvc_yaml_names_no_method_in_plots_and_the_plots_folder_is_ignored():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    text = json.dumps(spec.get("plots") or [])
    named = [m for m in ("baseline", "remix", "ogm_ge", "pmr", "mla") if m in text]
    assert not named, f"dvc.yaml's plots name methods {named}: a method added to train.methods would be left out"
    ignored = subprocess.run(["git", "check-ignore", "-q", "dvc_plots/index.html"], cwd=REPO)
    assert ignored.returncode == 0, "dvc_plots/ (the plots' output folder) is not git-ignored"
