"""Data Remixing scoring: KL to uniform, weakest-modality assignment, the scores file."""
import math

import numpy as np
import pytest
import torch

from train.methods.remix import ScoresFile, assign_weakest, kl_to_uniform


def test_kl_to_uniform_matches_hand_computation():
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0], [10.0, -10.0, 0.0]])
    p = torch.softmax(logits, 1)
    hand = [sum(pi * math.log(pi * 3) for pi in row.tolist()) for row in p]
    assert torch.allclose(kl_to_uniform(logits), torch.tensor(hand), atol=1e-6)
    assert kl_to_uniform(logits)[0] == 0  # a uniform prediction diverges by nothing
    # p = (1/2, 1/4, 1/4): KL = 1/2 ln(3/2) + 2 * 1/4 ln(3/4)
    assert kl_to_uniform(logits)[1].item() == pytest.approx(0.5 * math.log(1.5) + 0.5 * math.log(0.75), abs=1e-6)


def test_assignment_is_the_argmin_over_modalities():
    kl = np.array([[0.1, 0.5, 0.3], [2.0, 1.0, 3.0], [0.4, 0.4, 0.0]], np.float32)
    assert assign_weakest(kl).tolist() == [0, 1, 2]


def test_scores_file_roundtrip_and_refuses_another_dataset(tmp_path):
    path = tmp_path / "scores.h5"
    f = ScoresFile(path, modalities=["audio", "video"], num_samples=3, fingerprint="abc")
    kl = np.array([[0.1, 0.2], [0.3, 0.1], [0.0, 0.5]], np.float32)
    f.write(4, kl, assign_weakest(kl))
    f.write(5, kl[::-1].copy(), assign_weakest(kl[::-1]))
    again = ScoresFile(path, modalities=["audio", "video"], num_samples=3, fingerprint="abc")
    assert again.epochs() == [4, 5]
    got_kl, got_assign = again.read(4)
    assert np.array_equal(got_kl, kl) and got_assign.tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="scores of another dataset"):
        ScoresFile(path, modalities=["audio", "video"], num_samples=3, fingerprint="other")
    with pytest.raises(ValueError, match="expected"):
        f.write(6, kl[:2], assign_weakest(kl[:2]))
