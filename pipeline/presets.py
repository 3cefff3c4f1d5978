"""Run a preset: a YAML file of ``dvc exp run -S`` overrides (``presets/<name>.yaml``) as one DVC experiment.

Usage (in the repository root, the venv active; docs/presets.md)::

    python -m pipeline.presets cremad_paper --root /data/CREMA-D [--set train.seed=1 ...] [--name NAME]
        [--dry-run] [--queue] [--target evaluate ...]

A preset file is a mapping of dotted params.yaml keys to values, each with a one-line comment
(``presets/cremad_paper.yaml``); ``NAME`` may also be the path of such a file. The runner applies, in
order, the preset's values, ``prepare.root=<--root>`` and every ``--set``; checks the merged params with the
stages' config classes (:func:`experiments.grid.check_params`, which applies each ``-S`` to params.yaml as DVC
does: :func:`experiments.grid.apply_set`), so a misspelt key or a value out of range fails naming the key before
DVC starts; then runs ``dvc exp run -n <name> -S ... <targets>`` in the foreground (``--queue``: queues it;
``dvc queue start`` runs it). The targets default to ``evaluate`` (every ``evaluate@<method>`` and what it
needs: prepare, extract, train), so the ``synth`` stage, which only makes the embedded dataset, does not run
for a root outside ``data/raw``. ``--dry-run`` prints the dvc command and runs nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from experiments.grid import Spec, check_params, dvc, dvc_env
from pipeline.params import SECTIONS

PRESETS_DIR = Path("presets")  # in the project folder (the working folder, as for DVC)
DEFAULT_TARGETS = ("evaluate",)


@dataclasses.dataclass(frozen=True)
class PresetSpec(Spec):
    """One experiment whose ``-S`` values are exactly ``sets`` (no grid axes): what :func:`check_params` checks."""

    method: str = ""
    fusion: str = ""
    seed: int = 0

    def assignments(self) -> list[str]:
        return list(self.sets)


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
    :func:`check_params`)."""
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
    """The ``-S`` values, in the order DVC applies them: the preset's, then ``prepare.root``, then ``--set``."""
    for s in sets:
        if "=" not in s or not s.partition("=")[0].strip():
            raise ValueError(f"--set {s!r}: expected key=value (e.g. train.epochs=4)")
    out = [f"{key}={yaml_value(value)}" for key, value in preset.items()]
    return out + ([f"prepare.root={yaml_value(root)}"] if root is not None else []) + list(sets)


def check_root(root: str) -> str:
    """``--root`` as an absolute path (DVC tracks it as a dependency of prepare and extract); it must exist."""
    path = Path(root).expanduser()
    if not path.exists():
        raise ValueError(f"--root {root}: no such file or folder (the raw dataset: CREMA-D's folder holding "
                         f"VideoFlash/ and AudioWAV/, Kinetics-Sounds' holding train/ and test/, or a CSV)")
    return str(path.resolve())


def exp_args(name: str, sets: Sequence[str], targets: Sequence[str], queue: bool) -> list[str]:
    """The arguments of ``dvc`` that run (or queue) the experiment."""
    args = ["exp", "run", *(["--queue"] if queue else []), "-n", name]
    for s in sets:
        args += ["-S", s]
    return args + list(targets)


def run_preset(name: str, *, root: str | None, sets: Sequence[str] = (), exp_name: str | None = None,
               targets: Sequence[str] = DEFAULT_TARGETS, queue: bool = False, dry_run: bool = False,
               cwd: str | Path = ".") -> int:
    """Check, then run (or queue, or print) the preset ``name`` as one DVC experiment; the exit status of dvc."""
    cwd = Path(cwd)
    path = preset_path(name, cwd / PRESETS_DIR)
    values = assignments(load_preset(path), check_root(root) if root is not None else None, sets)
    exp_name = exp_name or path.stem
    check_params([PresetSpec(exp_name, sets=tuple(values))], cwd / "params.yaml")
    args = exp_args(exp_name, values, targets, queue)
    print(shlex.join(["dvc", *args]), flush=True)
    if dry_run:
        return 0
    if queue:
        dvc(args, cwd)
        print(f"queued {exp_name}: `dvc queue start` runs it, `dvc queue status` follows it")
        return 0
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=dvc_env()).returncode


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
    ap.add_argument("--dry-run", action="store_true", help="check and print the dvc command, run nothing")
    args = ap.parse_args(argv)
    try:
        status = run_preset(args.preset, root=args.root, sets=args.sets, exp_name=args.name, targets=args.targets,
                            queue=args.queue, dry_run=args.dry_run)
    except (ValueError, OSError, RuntimeError) as e:  # RuntimeError: experiments.grid.GridError (queueing)
        sys.exit(f"pipeline.presets: {e}")
    sys.exit(status)


if __name__ == "__main__":
    main()
