"""Which clips Remix hands to each modality, by the embedded dataset's ground truth (audio kind).

    python benchmarks/assignments.py      # after `make demo`: runs/remix/train/scores.h5 + data/raw/synth_truth.csv

Prints, per remix epoch, the share of clean, ambiguous (no audio cue) and misleading (another
class's audio) training clips assigned to the audio modality.
"""
from __future__ import annotations

import csv

import h5py
import numpy as np

from pipeline.shards import IndexReader


def main() -> None:
    index = IndexReader("features/index.h5")
    kind = {r["clip_id"]: r["audio_kind"] for r in csv.DictReader(open("data/raw/synth_truth.csv"))}
    kinds = np.array([kind[index.clip_ids[r]] for r in index.indices("train")])  # [N] in the scores' order
    names = ("clean", "ambiguous", "misleading")
    print("| epoch | " + " | ".join(f"{k} clips to audio" for k in names) + " |")
    print("|---|" + "---|" * len(names))
    with h5py.File("runs/remix/train/scores.h5", "r") as f:
        audio = list(f.attrs["modalities"]).index("audio")
        for group in sorted(f):
            to_audio = f[group]["assign"][:] == audio
            cells = [f"{int((to_audio & (kinds == k)).sum())}/{int((kinds == k).sum())}" for k in names]
            print(f"| {int(group.split('_')[1])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
