"""DVC stage `check`: every section of params.yaml and the dataset it names, checked before any other stage runs.

DVC deletes a stage's outputs before running it; this stage, upstream of all others and rerun whenever a value of
params.yaml changes, stops `dvc repro` on a bad value before anything is deleted (pipeline/check.py).
"""
import os.path, sys  # noqa: E401  `python stages/<name>.py` works from any folder: the repo root first on sys.path
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse

from pipeline import lifetime
from pipeline.check import check_pipeline, write_checked
from pipeline.params import load_params, read_section, run_stage
from train.config import TrainConfig


def main() -> None:
    lifetime.bind_to_owner("check")
    ap = argparse.ArgumentParser(description=__doc__)  # path defaults: dvc.yaml vars `paths`
    ap.add_argument("--raw", default="data/raw", help="synth's output folder (not read when it is prepare.root)")
    ap.add_argument("--out", default="data/params.checked", help="file to write when every check passes")
    args = ap.parse_args()
    params = load_params()  # an unknown section fails here
    check_pipeline(params, synth_out=args.raw)
    read_section(params, TrainConfig)
    write_checked(args.out)
    print(f"check: params.yaml and the dataset it names pass every stage's checks ({args.out})")


if __name__ == "__main__":
    run_stage("check", main)
