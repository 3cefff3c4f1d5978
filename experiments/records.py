"""The finished runs of DVC experiments as :class:`Record` s: read from ``dvc exp show --json`` (:func:`collect`),
saved to and read from a records file (:func:`save_records`, :func:`load_records`).

Collecting (why this way): one ``dvc exp show --json`` call gives every experiment of HEAD (of every
commit with ``--all-commits``) with its full params and its metrics: ``runs/<method>/metrics.json`` is
a git-tracked metric of the evaluate stage, so it is in the experiment's own commit. The per-epoch log
``runs/<method>/train/log.json`` lies inside the DVC-cached ``runs/<method>/train`` output, so it is
read from the experiment's commit with ``dvc.api.DVCFileSystem(rev=<experiment sha>)`` (queued
experiments store their outputs in the repository's own cache). Only finished experiments count: not
the commit rows, not queued, running or failed experiments; the workspace (``dvc repro`` results, read from
the working tree) only where asked for (``workspace=True``: :mod:`experiments.show`).

A run is (method: its train.methods entry; fusion; seed: train.seed, or base.seed when -1; overrides: the
params that differ from its commit's params.yaml, minus train.methods / fusion / seed, ``*.workers`` /
checkpoint_every / verify_shards, and other methods' method_params). :func:`describe_data` says which data
a set of runs is on (the embedded synthetic dataset or a real one), for every plot's title.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from pipeline.dvc_cli import DvcError, dvc

GRID_KEYS = ("train.methods", "train.fusion", "train.seed")
NOT_RESULT_KEYS = ("train.checkpoint_every", "train.verify_shards")  # with *.workers: do not change results
SYNTH_ROOT = "data/raw"  # dvc.yaml vars paths.raw: where the synth stage writes the embedded dataset
WORKSPACE = "workspace"  # the rev of the working tree's row in `dvc exp show --json`


@dataclasses.dataclass(frozen=True)
class Record:
    """One finished run: one method of one DVC experiment."""

    name: str  # experiment name
    rev: str  # experiment commit sha
    timestamp: str  # ISO time of the experiment commit (the newest of a repeated seed wins)
    method: str
    fusion: str
    seed: int  # train.seed, or base.seed when train.seed is -1
    params: dict  # flat params.yaml: "train.epochs" -> value
    overrides: dict  # flat, the params that differ from the commit's (grid keys and ignored keys left out)
    metrics: dict  # runs/<method>/metrics.json
    expansion: float | None = None  # mean over epochs of log.json history `expansion` (1.0 where absent)
    train_s: float | None = None  # sum over epochs of history `train_s` (s)
    score_s: float | None = None  # sum over epochs of history `score_s` (s)
    epoch_s: float | None = None  # sum over epochs of history `epoch_s` (s)
    history: tuple = ()  # log.json history rows, one dict per epoch (for per-epoch plots: experiments.figure3)
    val: float | None = None  # log.json best.val_fused: validation accuracy of the checkpoint the run selected
    clip_keys: tuple = ()  # test clip keys of eval/predictions.csv, in its order
    right: dict = dataclasses.field(default_factory=dict)  # "fused" / modality -> "0110..": right on each clip

    def param(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    def clips(self, column: str = "fused") -> dict[str, bool] | None:
        """{clip key: right?} of ``column`` on test (None: no predictions.csv read)."""
        bits = self.right.get(column)
        return dict(zip(self.clip_keys, (b == "1" for b in bits))) if bits and self.clip_keys else None


def predictions_summary(rows: Sequence[dict[str, str]] | None) -> dict[str, Any]:
    """``clip_keys`` and ``right`` of a Record from predictions.csv rows (see train.evaluate)."""
    if not rows:
        return {}
    cols = [c for c in rows[0] if c not in ("key", "label")]
    return {"clip_keys": tuple(r["key"] for r in rows),
            "right": {c: "".join("1" if r[c] == r["label"] else "0" for r in rows) for c in cols}}


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": value}; lists and scalars are values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _overrides(params: dict, base: dict, method: str) -> dict[str, Any]:
    out = {}
    for k, v in params.items():
        if k in GRID_KEYS or k in NOT_RESULT_KEYS or k.endswith(".workers") or base.get(k, object()) == v:
            continue
        if k.startswith("train.method_params.") and k.split(".")[2] != method:
            continue  # another method's settings do not change this method's run
        out[k] = v
    return out


def log_summary(log: dict | None) -> dict[str, float | None]:
    """expansion (mean over epochs, 1.0 where a row has none) and the summed times of a log.json."""
    rows = (log or {}).get("history") or []
    if not rows:
        return {"expansion": None, "train_s": None, "score_s": None, "epoch_s": None}
    return {"expansion": sum(float(r.get("expansion", 1.0)) for r in rows) / len(rows),
            **{k: sum(float(r.get(k, 0.0)) for r in rows) for k in ("train_s", "score_s", "epoch_s")}}


def _params(data: dict | None) -> dict[str, Any]:
    return flatten((((data or {}).get("params") or {}).get("params.yaml") or {}).get("data") or {})


def run_records(name: str, rev: str, data: dict, base: dict, read_log: Callable[[str, str], dict | None],
                read_predictions: Callable[[str, str], list | None]) -> list[Record]:
    """The records of one experiment (or the workspace): one per method of its train.methods with a metrics.json."""
    params = _params(data)
    out = []
    for method in params.get("train.methods") or []:
        metrics = ((data.get("metrics") or {}).get(f"runs/{method}/metrics.json") or {}).get("data")
        if not metrics:
            continue
        log = read_log(rev, method)
        seed = int(params.get("train.seed", -1))
        if seed < 0:
            seed = int(params.get("base.seed", 0))
        out.append(Record(
            name=name, rev=rev, timestamp=data.get("timestamp") or "", method=method,
            fusion=str(params.get("train.fusion")), seed=seed, params=params,
            overrides=_overrides(params, base, method), metrics=metrics, **log_summary(log),
            history=tuple((log or {}).get("history") or ()), val=((log or {}).get("best") or {}).get("val_fused"),
            **predictions_summary(read_predictions(rev, method))))
    return out


def records_from_show(show: list[dict], read_log: Callable[[str, str], dict | None],
                      read_predictions: Callable[[str, str], list | None] = lambda rev, method: None,
                      workspace: bool = False) -> list[Record]:
    """Records of every finished experiment in ``dvc exp show --json`` output (and, with ``workspace``, of the
    working tree, named ``workspace``, its overrides against the first commit's params); ``read_log(rev, method)``
    gives that run's log.json (or None), ``read_predictions(rev, method)`` its eval/predictions.csv rows."""
    records = []
    commits = [c for c in show if c.get("rev") != WORKSPACE and c.get("data")]
    for commit in show:
        if commit.get("rev") == WORKSPACE:
            if workspace and commit.get("data"):
                base = _params(commits[0]["data"]) if commits else {}
                records += run_records(WORKSPACE, WORKSPACE, commit["data"], base, read_log, read_predictions)
            continue
        if not commit.get("data"):
            continue
        base = _params(commit["data"])
        for exp in commit.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state")
            if state not in (None, "success") or not exp.get("revs"):
                continue
            entry = exp["revs"][0]
            if entry.get("error") or not entry.get("data"):
                continue
            records += run_records(entry.get("name") or exp.get("name") or entry["rev"][:7], entry["rev"],
                                   entry["data"], base, read_log, read_predictions)
    return records


def collect(cwd: str | Path = ".", all_commits: bool = False, workspace: bool = False,
            predictions: bool = True) -> list[Record]:
    """Records of the repository at ``cwd`` (see the module docstring); ``predictions=False`` reads no
    eval/predictions.csv (the per-clip results only the tables' intervals need)."""
    from dvc.api import DVCFileSystem

    show = json.loads(dvc(["exp", "show", "--json", *(["-A"] if all_commits else [])], cwd).stdout)
    fs = functools.lru_cache(maxsize=4)(lambda rev: DVCFileSystem(str(cwd), rev=rev))  # one per run, not per file

    def read(rev: str, path: str) -> str | None:
        try:
            if rev == WORKSPACE:
                return (Path(cwd) / path).read_text()
            return fs(rev).read_text(path)
        except Exception as e:  # noqa: BLE001 - a missing file leaves the run's cells that need it blank
            print(f"warning: no {path} in {rev[:9]}: {e}", file=sys.stderr)
            return None

    def read_log(rev: str, method: str) -> dict | None:
        text = read(rev, f"runs/{method}/train/log.json")
        return json.loads(text) if text else None

    def read_predictions(rev: str, method: str) -> list | None:
        text = read(rev, f"runs/{method}/eval/predictions.csv") if predictions else None
        return list(csv.DictReader(io.StringIO(text))) if text else None

    return records_from_show(show, read_log, read_predictions, workspace)


def describe_data(records: Iterable[Record]) -> str:
    """Which data the runs are on, for a title: ``the embedded synthetic dataset (6 classes x 150 clips)`` when
    ``prepare.root`` is the synth stage's output, else ``<prepare.dataset> at <prepare.root>``; several, joined."""
    seen: dict[str, None] = {}
    for r in records:
        if r.param("prepare.root") == SYNTH_ROOT:
            level = r.param("synth.difficulty", "custom")
            text = (f"the embedded synthetic dataset ({'' if level == 'custom' else level + ', '}"
                    f"{r.param('synth.num_classes')} classes x {r.param('synth.clips_per_class')} clips)")
        else:
            text = f"{r.param('prepare.dataset')} at {r.param('prepare.root')}"
        seen[text] = None
    return " / ".join(seen) or "no runs"


def save_records(records: Sequence[Record], path: Path) -> None:
    """``records`` as JSON (``{"records": [Record fields, ...]}``): what :func:`load_records` reads back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"records": [dataclasses.asdict(r) for r in records]}, indent=0, sort_keys=True) + "\n")


def load_records(path: Path) -> list[Record]:
    """The records :func:`save_records` wrote."""
    data = json.loads(Path(path).read_text())
    return [Record(**{**r, "history": tuple(r.get("history") or ()), "clip_keys": tuple(r.get("clip_keys") or ())})
            for r in data["records"]]


def cli_records(prog: str, all_commits: bool, records: Path | None = None, read: bool = False) -> list[Record]:
    """:func:`collect` for a command line (written to ``records`` when given), or, with ``read``, the records saved
    in ``records``; exits with ``<prog>: <reason>`` when the experiments cannot be read."""
    if read:
        if records is None or not Path(records).is_file():
            sys.exit(f"{prog}: no saved records at {records} (write them with a run without --from-records)")
        return load_records(Path(records))
    try:
        out = collect(".", all_commits)
    except DvcError as e:
        sys.exit(f"{prog}: {e}")
    if records is not None:
        save_records(out, Path(records))
    return out

