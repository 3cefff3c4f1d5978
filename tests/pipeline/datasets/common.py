"""Shared helpers of the dataset-adapter tests: trees of empty files (the extractor, not the adapter, opens them)."""
from pathlib import Path

OPTS = dict(val_fraction=0.1, seed=0, ratios=(0.8, 0.1, 0.1), group_disjoint=False)


def touch(root, *rels):
    for rel in rels:
        p = Path(root, rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()


def cremad_tree(root, ids):
    touch(root, *[f"VideoFlash/{i}.flv" for i in ids], *[f"AudioWAV/{i}.wav" for i in ids])


def by_id(records):
    return {r.clip_id: r for r in records}
