"""DVC stage `prepare`: a dataset tree (or CSV) -> data/manifest.csv and data/classes.txt."""
import logging
from collections import Counter

from pipeline.adapters import prepare_dataset
from pipeline.manifest import write_classes, write_manifest
from pipeline.params import check_keys, load_params

KEYS = {"dataset": str, "root": str, "split_file": (str, type(None)), "ratios": list, "val_fraction": float,
        "group_disjoint": bool}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params()
    prep = check_keys(params["prepare"], "prepare", KEYS)
    records, class_names = prepare_dataset(seed=params["base"]["seed"], **prep)
    write_manifest("data/manifest.csv", records)
    write_classes("data/classes.txt", class_names)
    counts = Counter(r.split for r in records)
    flagged = sum(1 for r in records if r.problem)
    print(f"prepare: {len(records)} clips, {len(class_names)} classes, splits {dict(counts)}, "
          f"{flagged} flagged for rejection")


if __name__ == "__main__":
    main()
