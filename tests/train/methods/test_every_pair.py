"""Every method of the registry with every fusion trains a few steps for real (tiny shards, CPU) and evaluates."""
import math

import pytest

from tests.train.test_data import extracted_features
from train.evaluate import evaluate
from train.methods import registry
from train.fusions import names
from train.config import TrainConfig
from train.trainer import train

ALL_FUSIONS = names()
# methods defined for some fusions only (the others must be refused clearly): Greedy needs MMTM's cross-modal
# modules; OGM-GE needs each modality's share of the fused logits, which CentralNet's central branch has not
NEEDS = {"greedy": {"mmtm"}, "ogm_ge": set(ALL_FUSIONS) - {"centralnet"}}


@pytest.mark.parametrize("fusion", ALL_FUSIONS)
@pytest.mark.parametrize("method", sorted(registry()))
def test_method_trains_with_fusion(method, fusion, cremad_raw, tmp_path_factory, tmp_path):
    features = extracted_features(cremad_raw, tmp_path_factory)
    cfg = TrainConfig(epochs=2, warmup_epochs=1, width=4, batch_size=4, frame_size=24, workers=0, guard="none",
                      fusion=fusion, methods=[method])
    if fusion not in NEEDS.get(method, {fusion}):
        with pytest.raises(ValueError, match="fusion"):
            train(index_path=features / "index.h5", out_dir=tmp_path / "train", method=method, config=cfg, seed=0)
        return
    summary = train(index_path=features / "index.h5", out_dir=tmp_path / "train", method=method, config=cfg, seed=0)
    assert len(summary["history"]) == 2 and all(math.isfinite(row["loss"]) for row in summary["history"])
    metrics = evaluate(index_path=features / "index.h5", run_dir=tmp_path)
    assert metrics["method"] == method and 0.0 <= metrics["acc_fused"] <= 1.0
