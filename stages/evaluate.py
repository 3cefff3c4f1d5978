"""DVC stage `evaluate@<method>`: runs/<method>/train/model.pt on test -> runs/<method>/metrics.json, runs/<method>/eval/."""
import os.path, sys  # noqa: E401  `python stages/<name>.py` works from any folder: the repo root first on sys.path
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse

from pipeline import lifetime
from pipeline.params import run_stage
from train.evaluate import evaluate


def main() -> None:
    lifetime.bind_to_owner("evaluate")  # under DVC: this stage and its workers die with the dvc process
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--method", required=True)
    # path defaults: dvc.yaml vars `paths`
    ap.add_argument("--index", default="features/index.h5", help="feature index with the test split")
    ap.add_argument("--runs", default="runs", help="runs folder: reads <runs>/<method>/train/, writes "
                                                   "<runs>/<method>/metrics.json and eval/")
    args = ap.parse_args()
    metrics = evaluate(index_path=args.index, run_dir=f"{args.runs}/{args.method}")
    print(f"evaluate {args.method}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith("acc_")))


if __name__ == "__main__":
    run_stage("evaluate", main)
