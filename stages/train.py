"""DVC stage `train@<method>`: features/ -> runs/<method>/train/ (model.pt selected on val, scores.h5, log.json, live/)."""
import argparse
import logging
import os
import sys

from pipeline.params import BaseConfig, load_params, read_section
from train.config import TrainConfig, training_seed
from train.trainer import train


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--method", required=True, help="one of train.methods")
    # path defaults: dvc.yaml vars `paths`
    ap.add_argument("--index", default="features/index.h5", help="feature index to train on")
    ap.add_argument("--runs", default="runs", help="runs folder: writes <runs>/<method>/train/")
    args = ap.parse_args()
    params = load_params()
    config = read_section(params, TrainConfig)
    base = read_section(params, BaseConfig)
    if config.nproc > 1 and "LOCAL_RANK" not in os.environ:  # become torchrun, which starts nproc ranks of this stage
        os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  f"--nproc_per_node={config.nproc}", "-m", "stages.train", *sys.argv[1:]])
    summary = train(index_path=args.index, out_dir=f"{args.runs}/{args.method}/train", method=args.method,
                    config=config, seed=training_seed(config, base.seed))
    if os.environ.get("RANK", "0") == "0":
        print(f"train {args.method}: best epoch {summary['best']['epoch']}, val fused {summary['best']['val_fused']:.3f}")


if __name__ == "__main__":
    main()
