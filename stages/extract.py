"""DVC stage `extract`: data/manifest.csv -> features/ (shards, index.h5, stats.json, rejects.csv).

    python -m stages.extract                 # what `dvc repro` runs: all shards, one machine
    python -m stages.extract --part 3/8      # shards numbered 3 mod 8 only (one job of an array)
    python -m stages.extract --merge 8       # after all 8 parts: index.h5, stats.json, rejects.csv
"""
import argparse
import logging

from pipeline.extract import extract, merge_parts
from pipeline.features import FeatureConfig
from pipeline.params import check_keys, load_params

STAGE_KEYS = {"shard_size": int, "workers": int, "max_reject_fraction": (int, float)}  # beside FeatureConfig


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--part", default="0/1", help="i/N: extract the shards whose number is i mod N")
    group.add_argument("--merge", type=int, metavar="N", help="merge the parts of N partitioned runs")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = dict(load_params(args.params)["features"])
    stage = check_keys({k: params.pop(k) for k in STAGE_KEYS if k in params}, "features", STAGE_KEYS)
    config = FeatureConfig.from_params(params)
    if args.merge:
        stats = merge_parts(out_dir="features", num_parts=args.merge, max_reject_fraction=stage["max_reject_fraction"])
    else:
        stats = extract(manifest="data/manifest.csv", classes="data/classes.txt", out_dir="features",
                        config=config, part=args.part, **stage)
    print(f"extract: {stats['samples']} samples, {stats['rejects']['count']} rejected, "
          f"{stats['timing']['clips_per_second']} clips/s")


if __name__ == "__main__":
    main()
