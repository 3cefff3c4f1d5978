"""DVC stage `synth`: write the embedded default dataset (real encoded clips) to data/raw."""
import os.path, sys  # noqa: E401  `python stages/<name>.py` works from any folder: the repo root first on sys.path
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import logging

from pipeline import lifetime
from pipeline.params import BaseConfig, load_params, read_section, run_stage
from pipeline.synth import SynthConfig, generate


def main() -> None:
    lifetime.bind_to_owner("synth")  # under DVC: this stage and its workers die with the dvc process
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__)  # path defaults: dvc.yaml vars `paths`
    ap.add_argument("--out", default="data/raw", help="dataset folder to write")
    args = ap.parse_args()
    params = load_params()
    config = read_section(params, SynthConfig)
    summary = generate(out_dir=args.out, seed=read_section(params, BaseConfig).seed, config=config)
    print(f"synth: {summary['clips']} {config.layout} clips, {len(summary['classes'])} classes, "
          f"audio kinds {summary['per_kind']}, {summary['seconds']:.0f} s")


if __name__ == "__main__":
    run_stage("synth", main)
