"""Queue and run a grid of DVC experiments, one per (method, fusion, seed); then wait for them.

Usage (in the repository root, the venv active)::

    python -m experiments.grid --methods baseline remix --fusions concat --seeds 0 1 2 \\
        [--set train.epochs=4 ...] [--name NAME] [--jobs 1] [--force | --skip-existing] [--dry-run]
    python -m experiments.grid --paper --seeds 0 1 2 [--skip-existing]   # every run of Tables 1-6 and Figure 3, queued at once

Each run is queued as::

    dvc exp run --queue -n <NAME>-<method>-<fusion>-s<seed> -S 'train.methods=[<method>]' \\
        -S train.fusion=<fusion> -S train.seed=<seed> [-S <each --set>]

(NAME: ``--name``, else ``grid``, or ``grid-<6 hex of the --set values>`` when there are any), then
``dvc queue start -j <jobs>`` starts the background worker(s), and the runner polls ``dvc queue status``
every ``--poll`` seconds, showing a progress bar over finished experiments. The first failed experiment
stops the runner with a non-zero exit naming it, with the tail of ``dvc queue logs <name>``; the worker
is stopped after its current experiment (``dvc queue stop``), the rest stay queued (``dvc queue start``
resumes them, ``dvc queue remove --queued`` drops them). ``--dry-run`` prints the commands only.

Why the queue and ``dvc queue status``, not ``dvc exp run --run-all`` (dvc 3.67 in the venv):
``--run-all`` is the same celery queue, but it follows the experiments' logs one after another and
reports failures only at the end (and iterative/dvc#10398 reports it stalling after two experiments);
polling ``dvc queue status`` sees every experiment's state (Queued, Running, Success, Failed) at once.

What a queued experiment sees: a temporary clone (``.dvc/tmp/exps``) of HEAD plus the workspace's
changes to *tracked* files; untracked files do not reach it (``git add`` or commit a new method module
first; the runner warns about untracked files under stages/, pipeline/, train/). Varying ``train.*``
reruns only ``train@<method>`` and ``evaluate@<method>``: synth, prepare and extract read no ``train``
key, so their outputs come from the DVC cache (dvc.lock, or the run cache). Every run's results stay
in the repository as a DVC experiment (``dvc exp show``), which :mod:`experiments.tables` reads.

Names must be unique per commit: a name that exists for HEAD fails before anything is queued, unless
``--force`` (rerun and overwrite) or ``--skip-existing`` (keep it, queue the others).

Nothing is queued before every experiment's params are checked (:func:`check_params`): ``params.yaml`` with
the grid's ``-S`` values applied, each section through its config class, so a misspelt method, fusion or
``--set`` key, a value out of range or a bad ``--jobs`` fails at once, naming the key, instead of failing
in the queue. A runner killed part-way leaves its experiments queued or running in DVC's queue (its worker
is DVC's own daemon, stopped by ``dvc queue stop``): run the same command again with ``--skip-existing``
and it keeps the finished ones and waits for the queued or running ones instead of queueing them twice;
without it the runner refuses, naming them.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from pipeline.dvc_cli import DvcError, dvc
from pipeline.overrides import check_overrides
from pipeline.params import load_params

GRID_KEYS = ("train.methods", "train.fusion", "train.seed")  # set by the grid itself, not by --set

# The grids behind the paper's Tables 1-6 and Figure 3 (``--paper``), in the order they run: (methods, fusions, --set values).
PAPER_GRIDS = (
    (("baseline", "remix"), ("concat", "sum", "decision", "film", "gated"), ()),  # Table 1
    (("baseline", "ogm_ge", "pmr", "gblend", "resample", "mla", "remix", "resample_remix", "mla_remix"),
     ("concat",), ()),  # Tables 2 and 3
    (("baseline", "greedy"), ("mmtm",), ()),  # Tables 2 and 3 (Greedy needs MMTM)
    (("baseline", "remix"), ("mmtm", "centralnet"), ()),  # Table 4
    (("remix",), ("concat",), ("train.ablation=decouple",)),  # Table 5
    (("remix",), ("concat",), ("train.ablation=reassemble",)),  # Table 5
    (("remix",), ("concat",), ("train.unimodal_pred=dropout",)),  # Table 6
    (("remix",), ("concat",), ("train.grad_angle=audio",)),  # Figure 3c, with reassembly
    (("remix",), ("concat",), ("train.grad_angle=audio", "train.ablation=decouple")),  # Figure 3c, without
)
STATUSES = ("Queued", "Running", "Success", "Failed", "Unknown")  # the Status column of `dvc queue status`


GridError = DvcError  # a dvc command failed (pipeline.dvc_cli.dvc), or an experiment did (ExperimentFailed)


class ExperimentFailed(GridError):
    def __init__(self, name: str, task: str, log_tail: str = ""):
        self.name, self.task = name, task
        super().__init__(f"experiment {name!r} (queue task {task}) failed"
                         + (f"; the end of `dvc queue logs {name}`:\n{log_tail}" if log_tail else ""))


@dataclasses.dataclass(frozen=True)
class Spec:
    """One experiment of the grid."""

    name: str  # the DVC experiment name (a git ref name component)
    method: str  # the one entry of train.methods
    fusion: str  # train.fusion
    seed: int  # train.seed
    sets: tuple[str, ...] = ()  # extra `-S key=value` overrides, in order

    def assignments(self) -> list[str]:
        """The ``-S`` values of this experiment, in order."""
        return [f"train.methods=[{self.method}]", f"train.fusion={self.fusion}", f"train.seed={self.seed}",
                *self.sets]

    def queue_args(self, force: bool = False) -> list[str]:
        """The arguments of ``dvc`` that queue this experiment."""
        args = ["exp", "run", "--queue", *(["-f"] if force else []), "-n", self.name]
        for s in self.assignments():
            args += ["-S", s]
        return args


def check_sets(sets: Iterable[str]) -> tuple[str, ...]:
    """The --set values, checked: ``[file:]key=value``, and no key the grid sets itself."""
    out = []
    for s in sets:
        key, eq, _ = s.partition("=")
        key = key.split(":", 1)[-1].strip().lstrip("+~")
        if not eq or not key:
            raise ValueError(f"--set {s!r}: expected key=value (e.g. train.epochs=4)")
        if key in GRID_KEYS:
            raise ValueError(f"--set {s!r}: {key} is a grid axis; use --methods / --fusions / --seeds")
        out.append(s)
    return tuple(out)


def default_prefix(sets: Sequence[str]) -> str:
    """``grid``, or ``grid-<6 hex>`` from the sorted --set values (so two grids' names do not clash)."""
    if not sets:
        return "grid"
    return "grid-" + hashlib.sha1("\n".join(sorted(sets)).encode()).hexdigest()[:6]


def exp_name(prefix: str, method: str, fusion: str, seed: int) -> str:
    """``<prefix>-<method>-<fusion>-s<seed>``, with characters a git ref name may not hold replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{prefix}-{method}-{fusion}-s{seed}")


def build_specs(methods: Sequence[str], fusions: Sequence[str], seeds: Sequence[int],
                sets: Sequence[str] = (), prefix: str | None = None) -> list[Spec]:
    """The grid, method-major then fusion then seed (the order it is queued and run)."""
    sets = check_sets(sets)
    prefix = prefix or default_prefix(sets)
    specs = [Spec(exp_name(prefix, m, f, s), m, f, int(s), sets) for m in methods for f in fusions for s in seeds]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"the grid repeats experiment names: {sorted({n for n in names if names.count(n) > 1})}")
    return specs


def check_params(specs: Sequence[Spec], params_path: str | Path = "params.yaml") -> None:
    """Check every experiment's params (``params_path`` with its ``-S`` values applied) by the config classes of
    the stages (:func:`pipeline.overrides.check_overrides`); raise ValueError naming the experiment and the key
    (``experiment <name>: train.methods: 'nosuch' is not one of ...``)."""
    base = load_params(params_path)
    checked: set[tuple] = set()
    for spec in specs:
        key = (spec.method, spec.fusion, spec.seed, spec.sets)
        if key in checked:
            continue
        checked.add(key)
        try:
            check_overrides(spec.assignments(), base=base)
        except ValueError as err:
            raise ValueError(f"experiment {spec.name}: {err}") from None


def paper_specs(seeds: Sequence[int], sets: Sequence[str] = ()) -> list[Spec]:
    """Every experiment of :data:`PAPER_GRIDS` over ``seeds`` (extra ``sets`` appended to each), each name once
    (a run shared by two tables, e.g. baseline/concat in Tables 1-3, is queued once), seed-major: every cell of
    every table at the first seed, then at the second, ... so that a grid stopped early (``dvc queue stop``)
    leaves every table filled at fewer seeds rather than some tables empty."""
    specs: dict[str, Spec] = {}
    for methods, fusions, grid_sets in PAPER_GRIDS:
        for s in build_specs(methods, fusions, seeds, [*grid_sets, *sets]):
            specs.setdefault(s.name, s)
    order = {int(seed): i for i, seed in reversed(list(enumerate(seeds)))}
    return sorted(specs.values(), key=lambda s: order[s.seed])  # stable: table order within a seed


def parse_queue_status(text: str, names: Iterable[str] | None = None) -> list[tuple[str, str, str]]:
    """(task, name, status) rows of ``dvc queue status`` output.

    Columns are Task, Name, Created (one or several words), Status; the name is taken only where it is one
    of ``names`` (ours never hold spaces), so a row with no name or a foreign one has name "" or its own."""
    names = set(names) if names is not None else None
    rows = []
    for line in text.splitlines():
        tok = line.split()
        if len(tok) < 3 or tok[-1] not in STATUSES or not re.fullmatch(r"[0-9a-f]{7,40}", tok[0]):
            continue
        name = tok[1] if (names is None or tok[1] in names) and tok[1] not in STATUSES else ""
        rows.append((tok[0], name, tok[-1]))
    return rows


def wait(names: Sequence[str], status: Callable[[], list[tuple[str, str, str]]], *, ignore_tasks: set[str] = frozenset(),
         interval: float = 10.0, timeout: float | None = None, on_done: Callable[[str], None] = lambda name: None,
         sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
    """Poll ``status()`` until every experiment of ``names`` succeeded; raise on the first failure.

    ``ignore_tasks``: queue tasks that existed before this grid was queued (an earlier run of a name)."""
    pending, t0 = list(names), clock()
    while pending:
        for task, name, state in status():
            if task in ignore_tasks or name not in pending:
                continue
            if state == "Failed":
                raise ExperimentFailed(name, task)
            if state == "Success":
                pending.remove(name)
                on_done(name)
        if pending:
            if timeout is not None and clock() - t0 > timeout:
                raise GridError(f"timed out after {timeout:.0f} s waiting for {pending}: see `dvc queue status`")
            sleep(interval)


def _warn_untracked(cwd: Path) -> None:
    proc = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--", "stages", "pipeline", "train",
                           "dvc.yaml", "params.yaml"], cwd=cwd, capture_output=True, text=True)
    files = [f for f in proc.stdout.split() if not f.endswith((".pyc", "/"))]
    if files:
        print(f"warning: untracked, so not part of the queued experiments (git add them first): {', '.join(files)}",
              file=sys.stderr)


def run_grid(specs: list[Spec], *, cwd: str | Path = ".", jobs: int = 1, interval: float = 10.0,
             timeout: float | None = None, force: bool = False, skip_existing: bool = False,
             dry_run: bool = False) -> list[str]:
    """Queue ``specs``, start ``jobs`` workers, wait for all; return the names run. See the module docstring."""
    cwd = Path(cwd)
    if jobs < 1:
        raise ValueError(f"--jobs: must be >= 1, got {jobs}")
    if interval <= 0 or (timeout is not None and timeout <= 0):
        raise ValueError(f"--poll and --timeout: must be > 0 seconds, got {interval} and {timeout}")
    check_params(specs, cwd / "params.yaml")  # before anything is queued
    if dry_run:
        for s in specs:
            print(shlex.join(["dvc", *s.queue_args(force)]))
        print(shlex.join(["dvc", "queue", "start", "-j", str(jobs)]))
        return [s.name for s in specs]
    _warn_untracked(cwd)
    existing = set(dvc(["exp", "ls", "--name-only"], cwd).stdout.split())
    clash = [s.name for s in specs if s.name in existing]
    if clash and skip_existing:
        print(f"keeping {len(clash)} existing experiment(s): {', '.join(clash)}")
        specs = [s for s in specs if s.name not in existing]
    elif clash and not force:
        raise GridError(f"experiment(s) {clash} already exist for this commit: --force reruns them, "
                        "--skip-existing keeps them, --name picks other names")
    if not specs:
        return []
    names = [s.name for s in specs]
    rows = parse_queue_status(dvc(["queue", "status"], cwd).stdout, names)
    pending = {name: task for task, name, state in rows if name in names and state in ("Queued", "Running")}
    if pending and not skip_existing:
        raise GridError(f"experiment(s) {sorted(pending)} are already queued or running (an earlier runner "
                        "stopped before they finished?): --skip-existing waits for them instead of queueing them "
                        "again; `dvc queue kill` / `dvc queue remove` drops them")
    if pending:
        print(f"waiting for {len(pending)} experiment(s) already queued or running: {', '.join(sorted(pending))}")
    before = {task for task, _, _ in rows} - set(pending.values())
    for i, s in enumerate(x for x in specs if x.name not in pending):
        try:
            dvc(s.queue_args(force), cwd)
        except GridError as e:
            raise GridError(f"queueing {s.name} failed{' (the ones before stay queued: dvc queue status)' if i else ''}"
                            f": {e}") from None
    dvc(["queue", "start", "-j", str(jobs)], cwd)
    from tqdm import tqdm

    with tqdm(total=len(names), desc="experiments", unit="exp") as bar:
        def done(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update()

        try:
            wait(names, lambda: parse_queue_status(dvc(["queue", "status"], cwd).stdout, names),
                 ignore_tasks=before, interval=interval, timeout=timeout, on_done=done)
        except ExperimentFailed as e:
            logs = dvc(["queue", "logs", e.name], cwd, check=False)
            tail = "\n".join((logs.stdout + logs.stderr).strip().splitlines()[-40:])
            dvc(["queue", "stop"], cwd, check=False)
            raise ExperimentFailed(e.name, e.task, tail + "\n(the queue worker stops after its current experiment; "
                                   "`dvc queue start` resumes the rest, `dvc queue remove --queued` drops them)") from None
    return names


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.grid", description=__doc__.split("\n\n")[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--methods", nargs="+", help="values of train.methods, one experiment each")
    what.add_argument("--paper", action="store_true",
                      help="every grid of the paper's Tables 1-6 and Figure 3 (PAPER_GRIDS) over --seeds, shared runs once")
    ap.add_argument("--fusions", nargs="+", default=["concat"], help="values of train.fusion")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="values of train.seed")
    ap.add_argument("--set", dest="sets", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="extra dvc -S overrides for every experiment (e.g. train.epochs=4)")
    ap.add_argument("--name", help="experiment name prefix (default: grid[-<hash of --set>])")
    ap.add_argument("--jobs", type=int, default=1, help="experiments run at once (dvc queue start -j)")
    ap.add_argument("--poll", type=float, default=10.0, help="seconds between `dvc queue status` polls")
    ap.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    ex = ap.add_mutually_exclusive_group()
    ex.add_argument("--force", action="store_true", help="rerun and overwrite experiments whose name exists")
    ex.add_argument("--skip-existing", action="store_true", help="keep experiments whose name exists")
    ap.add_argument("--dry-run", action="store_true", help="print the dvc commands, run nothing")
    args = ap.parse_args(argv)
    try:
        if args.paper and args.name:
            raise ValueError("--paper names its experiments itself (as the single grids do); drop --name")
        specs = (paper_specs(args.seeds, args.sets) if args.paper
                 else build_specs(args.methods, args.fusions, args.seeds, args.sets, args.name))
        names = run_grid(specs, jobs=args.jobs, interval=args.poll, timeout=args.timeout, force=args.force,
                         skip_existing=args.skip_existing, dry_run=args.dry_run)
    except (GridError, ValueError, OSError) as e:  # OSError: no params.yaml here
        sys.exit(f"experiments.grid: {e}")
    if not args.dry_run:
        print(f"{len(names)} experiment(s) done; tables: python -m experiments.tables")


if __name__ == "__main__":
    main()
