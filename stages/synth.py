"""DVC stage `synth`: write the embedded default dataset (real encoded clips) to data/raw."""
import logging

from pipeline.params import from_mapping, load_params
from pipeline.synth import SynthConfig, generate


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params()
    config = from_mapping(SynthConfig, params["synth"], "synth")
    summary = generate(out_dir="data/raw", seed=params["base"]["seed"], config=config)
    print(f"synth: {summary['clips']} {config.layout} clips, {len(summary['classes'])} classes, "
          f"audio kinds {summary['per_kind']}, {summary['seconds']:.0f} s")


if __name__ == "__main__":
    main()
