"""Run a preset: a YAML file of ``dvc exp run -S`` overrides (``presets/<name>.yaml``) as one DVC experiment.

Usage (in the repository root, the venv active; docs/presets.md)::

    python -m pipeline.presets cremad_paper --root /data/CREMA-D [--set train.seed=1 ...] [--name NAME]
        [--dry-run] [--queue] [--target evaluate ...]

A preset file is a mapping of dotted params.yaml keys to values, each with a one-line comment
(``presets/cremad_paper.yaml``); ``NAME`` may also be the path of such a file. The runner applies, in
order, the preset's values, ``prepare.root=<--root>`` and every ``--set``; checks the merged params with the
stages' config classes (:func:`pipeline.overrides.check_overrides`, which applies each ``-S`` to params.yaml as
DVC does), so a misspelt key or a value out of range fails naming the key before DVC starts; lists the dataset
with the adapter of ``prepare.dataset`` (the prepare stage's own check: layout, split lists, missing files), so a
wrong ``--root`` fails naming what is missing; then runs ``dvc exp run --temp -n <name> -S ... <targets>`` in the
foreground and, when it succeeds, ``dvc exp apply <name>`` (``--queue``: queues it; ``dvc queue start`` runs it).

The experiment runs in a temporary copy of the project (``--temp``: ``.dvc/tmp/exps``; the untracked files of
stages/, pipeline/, train/ and a relative ``prepare.split_file`` are copied in, ``-C``), so a run that fails or is
killed leaves params.yaml, dvc.lock and every output of the workspace as they were; only a finished experiment
is applied to the workspace. The targets default to ``evaluate`` (every ``evaluate@<method>`` and what it
needs: prepare, extract, train), so the ``synth`` stage, which only makes the embedded dataset, does not run
for a root outside ``data/raw``. ``--dry-run`` does every check, prints the dvc command and runs nothing.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import yaml

from pipeline.datasets import PrepareConfig, prepare_dataset
from pipeline.dvc_cli import dvc, dvc_env
from pipeline.overrides import check_overrides
from pipeline.params import SECTIONS, Config

PRESETS_DIR = Path("presets")  # in the project folder (the working folder, as for DVC)
DEFAULT_TARGETS = ("evaluate",)
SYNTH_OUT = "data/raw"  # dvc.yaml vars paths.raw: the synth stage's output (the embedded dataset)
CODE = ("stages", "pipeline", "train")  # what a stage imports: its untracked files are copied into the run (-C)


def preset_path(name: str, presets_dir: Path = PRESETS_DIR) -> Path:
    """``presets/<name>.yaml``, or ``name`` itself when it is a YAML file; an error listing the presets if neither."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    path = presets_dir / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in presets_dir.glob("*.yaml")) if presets_dir.is_dir() else []
        raise ValueError(f"preset {name!r}: no {path} (presets: {', '.join(known) or 'none'})")
    return path


def load_preset(path: Path) -> dict[str, Any]:
    """The preset's overrides: dotted key -> value, each key in a params.yaml section (checked further by
    :func:`check_values`)."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a mapping of dotted params keys to values (e.g. train.lr: 5.0e-5)")
    for key in data:
        section, dot, rest = str(key).partition(".")
        if not dot or not rest or section not in SECTIONS:
            raise ValueError(f"{path}: key {key!r}: expected <section>.<key> with a section of {list(SECTIONS)}")
    return data


def yaml_value(value: Any) -> str:
    """A value as the YAML text of a ``-S key=value`` (flow style: ``[baseline, remix]``, ``null``, ``5.0e-05``)."""
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip().removesuffix("...").strip()


def assignments(preset: dict[str, Any], root: str | None, sets: Sequence[str]) -> list[str]:
    """The ``-S`` values, in the order DVC applies them: the preset's, then ``prepare.root``, then ``--set``. A
    mapping of the preset is ``++key=`` (merged into params.yaml's: DVC refuses a plain ``key=`` that adds keys)."""
    for s in sets:
        if "=" not in s or not s.partition("=")[0].strip():
            raise ValueError(f"--set {s!r}: expected key=value (e.g. train.epochs=4)")
    out = [f"{'++' if isinstance(value, dict) else ''}{key}={yaml_value(value)}" for key, value in preset.items()]
    return out + ([f"prepare.root={yaml_value(root)}"] if root is not None else []) + list(sets)


def check_root(root: str) -> str:
    """``--root`` as an absolute path (DVC tracks it as a dependency of prepare and extract); it must exist."""
    path = Path(root).expanduser()
    if not path.exists():
        raise ValueError(f"--root {root}: no such file or folder (the raw dataset: CREMA-D's folder holding "
                         f"VideoFlash/ and AudioWAV/, Kinetics-Sounds' holding train/ and test/, or a CSV)")
    return str(path.resolve())


def check_values(exp_name: str, values: Sequence[str], params_path: Path) -> dict[str, Config]:
    """Every section's config of ``params_path`` with ``values`` applied; a ValueError naming the experiment and key."""
    try:
        return check_overrides(values, params_path)
    except ValueError as err:
        raise ValueError(f"experiment {exp_name}: {err}") from None


def check_dataset(configs: dict[str, Config], cwd: Path) -> str:
    """List the dataset as the prepare stage will (the adapter of ``prepare.dataset``, its split lists, the files it
    names); a :class:`pipeline.manifest.ManifestError` (a ValueError) names what is wrong. Returns a summary line."""
    prep: PrepareConfig = configs["prepare"]
    if (cwd / prep.root).resolve() == (cwd / SYNTH_OUT).resolve():  # the synth stage writes it: nothing to list yet
        return f"{prep.dataset} at {prep.root}: the embedded dataset, written by the synth stage"
    split_file = str(cwd / prep.split_file) if prep.split_file else None
    records, classes = prepare_dataset(
        dataset=prep.dataset, root=str(cwd / prep.root), split_file=split_file, ratios=prep.ratios,
        val_fraction=prep.val_fraction, group_disjoint=prep.group_disjoint, seed=configs["base"].seed,
        max_flagged_fraction=prep.max_flagged_fraction)
    splits = Counter(r.split for r in records)
    flagged = sum(1 for r in records if r.problem)
    return (f"{prep.dataset} at {prep.root}: {len(records)} clips, {len(classes)} classes, "
            + ", ".join(f"{splits[s]} {s}" for s in ("train", "val", "test")) + f", {flagged} flagged for rejection")


def copy_paths(configs: dict[str, Config], cwd: Path) -> list[str]:
    """The untracked (not git-ignored) files a stage reads that a ``--temp`` run would not see: those of
    :data:`CODE` and of a relative ``prepare.split_file`` inside the project."""
    split = configs["prepare"].split_file
    paths = [*CODE, *([split] if split and not os.path.isabs(split) else [])]
    proc = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--", *paths], cwd=cwd,
                          capture_output=True, text=True)
    return [f for f in proc.stdout.splitlines() if f and not f.endswith(".pyc")]


def exp_args(name: str, sets: Sequence[str], targets: Sequence[str], queue: bool,
             copy: Sequence[str] = ()) -> list[str]:
    """The arguments of ``dvc`` that run the experiment in a temporary copy (or queue it)."""
    args = ["exp", "run", "--queue" if queue else "--temp", "-n", name]
    for path in copy:
        args += ["-C", path]
    for s in sets:
        args += ["-S", s]
    return args + list(targets)


def run_preset(name: str, *, root: str | None, sets: Sequence[str] = (), exp_name: str | None = None,
               targets: Sequence[str] = DEFAULT_TARGETS, queue: bool = False, dry_run: bool = False,
               cwd: str | Path = ".") -> int:
    """Check, then run (or queue, or print) the preset ``name`` as one DVC experiment; the exit status of dvc.

    Runs in a temporary copy of the project and applies the experiment to the workspace only when it succeeded
    (see the module docstring): a failure leaves the workspace as it was."""
    cwd = Path(cwd)
    path = preset_path(name, cwd / PRESETS_DIR)
    values = assignments(load_preset(path), check_root(root) if root is not None else None, sets)
    exp_name = exp_name or path.stem
    configs = check_values(exp_name, values, cwd / "params.yaml")
    print(f"dataset: {check_dataset(configs, cwd)}", flush=True)
    args = exp_args(exp_name, values, targets, queue, copy_paths(configs, cwd))
    print(shlex.join(["dvc", *args]), flush=True)
    if dry_run:
        return 0
    if queue:
        dvc(args, cwd)
        print(f"queued {exp_name}: `dvc queue start` runs it, `dvc queue status` follows it")
        return 0
    status = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=dvc_env()).returncode
    if status != 0:
        print(f"pipeline.presets: experiment {exp_name} failed (dvc exit {status}); it ran in a temporary copy, so "
              "params.yaml, dvc.lock and the outputs here are unchanged", file=sys.stderr, flush=True)
        return status
    return apply(exp_name, targets, cwd)


def apply(exp_name: str, targets: Sequence[str], cwd: Path) -> int:
    """Bring the finished experiment into the workspace: ``dvc exp apply`` (params.yaml, dvc.lock, metrics), then
    ``dvc checkout --with-deps <targets>``, whose status is returned, then ``dvc commit --force --with-deps
    <targets>`` (the same hashes: it writes the outputs' .gitignore entries, which a run in a temporary copy does
    not bring back). exp apply also checks out every other stage's outputs, and fails on those the cache lacks (the
    ``synth`` stage's for a root of one's own, a fresh clone's outputs never pulled): its output is shown only
    when the targets' own checkout fails too."""
    applied = dvc(["exp", "apply", exp_name], cwd, check=False)
    if not _params_applied(exp_name, cwd):  # exp apply failed before its checkout: nothing of it is here
        print(f"{applied.stdout}pipeline.presets: experiment {exp_name} finished but was not applied here: "
              f"`dvc exp apply {exp_name}`", file=sys.stderr, flush=True)
        return applied.returncode or 1
    checkout = dvc(["checkout", "--with-deps", *targets], cwd, check=False)
    if checkout.returncode != 0:
        print(f"{applied.stdout}{checkout.stdout}pipeline.presets: experiment {exp_name} finished, but its outputs "
              f"could not be checked out here: `dvc exp apply {exp_name}` retries", file=sys.stderr, flush=True)
        return checkout.returncode
    dvc(["commit", "--force", "--with-deps", *targets], cwd)
    print(f"applied experiment {exp_name} to the workspace (params.yaml, dvc.lock and the outputs of "
          f"{' '.join(targets)}): `dvc exp show` compares it with the others", flush=True)
    return 0


def _params_applied(exp_name: str, cwd: Path) -> bool:
    """Whether the workspace's params.yaml is that of the experiment ``exp_name`` (its git ref, refs/exps/...)."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=cwd, capture_output=True,
                          text=True).stdout.split()
    ref = next((r for r in refs if r.rsplit("/", 1)[-1] == exp_name), None)
    shown = subprocess.run(["git", "show", f"{ref}:params.yaml"], cwd=cwd, capture_output=True) if ref else None
    return bool(shown and shown.returncode == 0 and (cwd / "params.yaml").read_bytes() == shown.stdout)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.presets", description=__doc__.split("\n\n")[0])
    ap.add_argument("preset", help="a preset name (presets/<name>.yaml) or a preset YAML file")
    ap.add_argument("--root", help="the raw dataset (prepare.root); default: params.yaml's")
    ap.add_argument("--set", dest="sets", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="extra dvc -S overrides, applied after the preset's (e.g. train.seed=1)")
    ap.add_argument("--name", help="the experiment's name (default: the preset's)")
    ap.add_argument("--target", dest="targets", nargs="+", default=list(DEFAULT_TARGETS),
                    help="the stages to reproduce (default: evaluate, with what it needs)")
    ap.add_argument("--queue", action="store_true", help="queue the experiment (dvc exp run --queue)")
    ap.add_argument("--dry-run", action="store_true", help="check the params and the dataset (the adapter's own "
                    "check of --root), print the dvc command, run nothing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")  # the adapter's warnings
    try:
        status = run_preset(args.preset, root=args.root, sets=args.sets, exp_name=args.name, targets=args.targets,
                            queue=args.queue, dry_run=args.dry_run)
    except (ValueError, OSError, RuntimeError) as e:  # ValueError: a param or the dataset; RuntimeError: DvcError
        sys.exit(f"pipeline.presets: {e}")
    sys.exit(status)


if __name__ == "__main__":
    main()
