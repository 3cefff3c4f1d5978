"""DVC stage `prepare`: a dataset tree (or CSV) -> data/manifest.csv and data/classes.txt."""
import argparse
import dataclasses
import logging
from collections import Counter

from pipeline.datasets import PrepareConfig, prepare_dataset
from pipeline.manifest import write_classes, write_manifest
from pipeline.params import BaseConfig, load_params, read_section


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__)  # path defaults: dvc.yaml vars `paths`
    ap.add_argument("--manifest", default="data/manifest.csv", help="manifest to write")
    ap.add_argument("--classes", default="data/classes.txt", help="class list to write")
    args = ap.parse_args()
    params = load_params()
    prep = read_section(params, PrepareConfig)
    records, class_names = prepare_dataset(seed=read_section(params, BaseConfig).seed, **dataclasses.asdict(prep))
    write_manifest(args.manifest, records)
    write_classes(args.classes, class_names)
    counts = Counter(r.split for r in records)
    flagged = sum(1 for r in records if r.problem)
    print(f"prepare: {len(records)} clips, {len(class_names)} classes, splits {dict(counts)}, "
          f"{flagged} flagged for rejection")


if __name__ == "__main__":
    main()
