"""DVC stage `extract`: data/manifest.csv -> features/ (shards, index.h5, stats.json, rejects.csv).

    python -m stages.extract                 # what `dvc repro` runs: all shards, one machine
    python -m stages.extract --part 3/8      # shards numbered 3 mod 8 only (one job of an array)
    python -m stages.extract --merge 8       # after all 8 parts: index.h5, stats.json, rejects.csv
"""
import os.path, sys  # noqa: E401  `python stages/<name>.py` works from any folder: the repo root first on sys.path
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import logging

from pipeline.extract import ExtractionError, extract, merge_parts
from pipeline.features import ExtractConfig
from pipeline import lifetime
from pipeline.params import BaseConfig, load_params, read_section, run_stage


def main() -> None:
    lifetime.bind_to_owner("extract")  # under DVC: this stage and its workers die with the dvc process
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--part", default="0/1", help="i/N: extract the shards whose number is i mod N")
    group.add_argument("--merge", type=int, metavar="N", help="merge the parts of N partitioned runs")
    ap.add_argument("--params", default="params.yaml")
    # path defaults: dvc.yaml vars `paths`
    ap.add_argument("--manifest", default="data/manifest.csv", help="manifest to read")
    ap.add_argument("--classes", default="data/classes.txt", help="class list to read")
    ap.add_argument("--out", default="features", help="features folder to write (shards, index.h5, ...)")
    args = ap.parse_args()
    params = load_params(args.params)
    cfg = read_section(params, ExtractConfig)
    if args.merge:
        stats = merge_parts(out_dir=args.out, num_parts=args.merge, max_reject_fraction=cfg.max_reject_fraction)
    else:
        stats = extract(manifest=args.manifest, classes=args.classes, out_dir=args.out, config=cfg.features,
                        part=args.part, shard_size=cfg.shard_size, workers=cfg.workers,
                        max_reject_fraction=cfg.max_reject_fraction,
                        shuffle_seed=read_section(params, BaseConfig).seed)  # the clips' order in the shards
    print(f"extract: {stats['samples']} samples, {stats['rejects']['count']} rejected, "
          f"{stats['timing']['clips_per_second']} clips/s")


if __name__ == "__main__":
    run_stage("extract", main, (ExtractionError,))
