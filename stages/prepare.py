"""DVC stage `prepare`: a dataset tree (or CSV) -> data/manifest.csv, data/classes.txt and data/inputs/ (links to
the files it read outside prepare.root, for DVC to watch: pipeline/inputs.py)."""
import os.path, sys  # noqa: E401  `python stages/<name>.py` works from any folder: the repo root first on sys.path
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import dataclasses
import logging
from collections import Counter

from pipeline.datasets import PrepareConfig, prepare_dataset
from pipeline.inputs import write_input_links
from pipeline.manifest import write_classes, write_manifest
from pipeline import lifetime
from pipeline.params import BaseConfig, load_params, read_section, run_stage


def main() -> None:
    lifetime.bind_to_owner("prepare")  # under DVC: this stage and its workers die with the dvc process
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__)  # path defaults: dvc.yaml vars `paths`
    ap.add_argument("--manifest", default="data/manifest.csv", help="manifest to write")
    ap.add_argument("--classes", default="data/classes.txt", help="class list to write")
    ap.add_argument("--inputs", default="data/inputs", help="folder of links to the files read outside the root")
    args = ap.parse_args()
    params = load_params()
    prep = read_section(params, PrepareConfig)
    seed = read_section(params, BaseConfig).seed
    # every check (params, dataset tree, split lists, missing files) is done before either output is written
    records, class_names = prepare_dataset(seed=seed, **dataclasses.asdict(prep))
    linked = write_input_links(args.inputs, records, prep.root, prep.split_file)
    write_manifest(args.manifest, records)
    write_classes(args.classes, class_names)
    counts = Counter(r.split for r in records)
    flagged = sum(1 for r in records if r.problem)
    print(f"prepare: {len(records)} clips, {len(class_names)} classes, splits {dict(counts)}, "
          f"{flagged} flagged for rejection, {linked} files outside {prep.root} linked in {args.inputs}")


if __name__ == "__main__":
    run_stage("prepare", main)
