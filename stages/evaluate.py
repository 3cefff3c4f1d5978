"""DVC stage `evaluate@<method>`: runs/<method>/train/model.pt on test -> runs/<method>/metrics.json, runs/<method>/eval/."""
import argparse

from train.evaluate import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--method", required=True)
    args = ap.parse_args()
    metrics = evaluate(index_path="features/index.h5", run_dir=f"runs/{args.method}")
    print(f"evaluate {args.method}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith("acc_")))


if __name__ == "__main__":
    main()
