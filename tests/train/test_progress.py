"""The training progress bar says which epoch of how many, and the method's phase (warm-up or remix)."""
from tests.train.test_data import extracted_features
from train.config import TrainConfig
from train.trainer import train


def test_progress_shows_epoch_k_of_n_and_the_phase(cremad_raw, tmp_path_factory, tmp_path, capfd):
    features = extracted_features(cremad_raw, tmp_path_factory)
    cfg = TrainConfig(epochs=2, warmup_epochs=1, width=4, batch_size=4, frame_size=24, workers=0, guard="none")
    train(index_path=features / "index.h5", out_dir=tmp_path / "remix" / "train", method="remix", config=cfg, seed=0)
    err = capfd.readouterr().err
    assert "remix epoch 1/2 (warmup)" in err and "remix epoch 2/2 (remix)" in err, err[-2000:]
