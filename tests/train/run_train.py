"""Test helper, run as a process (also under torchrun): ``python -m tests.train.run_train INDEX OUT METHOD CONFIG_JSON [--lopsided]``.

``--lopsided``: every sample is assigned to modality 0 but one, whose subset is smaller than the world size.
"""
import json
import logging
import sys

import numpy as np
import torch

from train import trainer
from train.config import TrainConfig
from train.methods import remix


def lopsided(kl: np.ndarray) -> np.ndarray:
    a = np.zeros(len(kl), np.int64)
    a[0] = 1
    return a


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    index, out, method, config = sys.argv[1:5]
    if "--lopsided" in sys.argv[5:]:
        remix.assign_weakest = lopsided
    trainer.train(index_path=index, out_dir=out, method=method, config=TrainConfig(**json.loads(config)),
                  seed=0)


if __name__ == "__main__":
    main()
