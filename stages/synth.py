"""DVC stage `synth`: write the embedded default dataset (real encoded clips) to data/raw."""
from pipeline.params import from_mapping, load_params
from pipeline.synth import SynthConfig, generate


def main() -> None:
    params = load_params()
    config = from_mapping(SynthConfig, params["synth"], "synth")
    summary = generate(out_dir="data/raw", seed=params["base"]["seed"], config=config)
    print(f"synth: {summary}")


if __name__ == "__main__":
    main()
