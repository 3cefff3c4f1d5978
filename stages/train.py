"""DVC stage `train@<method>`: features/ -> runs/<method>/train/ (model.pt selected on val, scores.h5, log.json, live/)."""
import os.path, sys  # noqa: E401  `python stages/<name>.py` works from any folder: the repo root first on sys.path
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import logging
import os
import signal
import sys

from pipeline import lifetime
from pipeline.params import BaseConfig, load_params, read_section, run_stage
from train import distributed  # torch only: a rank binds its life to torchrun's before the slower imports below

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    distributed.die_with_launcher()  # under torchrun (train.nproc > 1): this rank dies with it
    if "LOCAL_RANK" not in os.environ:  # the stage itself (not a rank): it and all it starts die with dvc
        lifetime.bind_to_owner("train")
    from train.config import TrainConfig, training_seed
    from train.trainer import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--method", required=True, help="one of train.methods")
    # path defaults: dvc.yaml vars `paths`
    ap.add_argument("--index", default="features/index.h5", help="feature index to train on")
    ap.add_argument("--runs", default="runs", help="runs folder: writes <runs>/<method>/train/")
    args = ap.parse_args()
    params = load_params()
    config = read_section(params, TrainConfig)  # every key checked (types, ranges, batch_size >= nproc) first
    base = read_section(params, BaseConfig)
    if config.nproc > 1 and "LOCAL_RANK" not in os.environ:  # torchrun starts nproc ranks of this stage
        # as this process's child, which dies with it (and the ranks with torchrun); REPO on PYTHONPATH: the
        # ranks find stages.train from any folder
        code = distributed.launch(config.nproc, ["-m", "stages.train", *sys.argv[1:]], pythonpath=REPO)
        if code:
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
            raise distributed.DistError(f"torchrun {how} (its ranks' errors, if any, are above): nothing "
                                        f"published; {args.runs}/{args.method}/train.work/ keeps the run to resume")
        return
    summary = train(index_path=args.index, out_dir=f"{args.runs}/{args.method}/train", method=args.method,
                    config=config, seed=training_seed(config, base.seed))
    if os.environ.get("RANK", "0") == "0":
        print(f"train {args.method}: best epoch {summary['best']['epoch']}, val fused {summary['best']['val_fused']:.3f}")


if __name__ == "__main__":
    from train.checkpoint import StateError
    # an error of the user's (params, inputs, the work folder's state, a lost rank) ends with one line naming it
    run_stage("train", main, errors=(StateError, distributed.DistError))
