"""Split files and seeded splits."""
import re
from collections import Counter

import pytest

from pipeline.manifest import ManifestError
from pipeline.splits import (
    carve_val,
    read_class_list,
    read_split_dir,
    read_split_file,
    split_counts,
    stratified_split,
)


def write(path, text, bom=False):
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


# ---------------------------------------------------------------- split files


def test_split_file_bom_crlf_whitespace_blank_lines(tmp_path):
    f = write(tmp_path / "train.csv", "1001_DFA_ANG_XX,ANG\r\n  1002_IEO_HAP_HI , HAP \r\n\r\n\r\n", bom=True)
    assert read_split_file(f) == {"1001_DFA_ANG_XX": "ANG", "1002_IEO_HAP_HI": "HAP"}


@pytest.mark.parametrize("row", ["1001_DFA_ANG_XX", "1001_DFA_ANG_XX,ANG,extra", ",ANG", "1001_DFA_ANG_XX,"])
def test_split_file_malformed_row_names_file_line(tmp_path, row):
    f = write(tmp_path / "train.csv", f"1002_DFA_ANG_XX,ANG\r\n{row}\r\n")
    with pytest.raises(ManifestError, match=r"train\.csv:2: malformed"):
        read_split_file(f)


def test_split_file_duplicate_id(tmp_path):
    f = write(tmp_path / "test.csv", "a,X\nb,Y\na,X\n")
    with pytest.raises(ManifestError, match=r"test\.csv:3: duplicate clip id 'a' \(first at line 1\)"):
        read_split_file(f)


def test_split_dir(tmp_path):
    write(tmp_path / "train.csv", "a,X\r\nb,Y\r\n", bom=True)
    write(tmp_path / "valid.csv", "c,X\n")
    write(tmp_path / "test.csv", "d,Y\n")
    assert read_split_dir(tmp_path) == {"a": ("train", "X"), "b": ("train", "Y"), "c": ("val", "X"), "d": ("test", "Y")}


def test_split_dir_id_in_two_files(tmp_path):
    write(tmp_path / "train.csv", "a,X\nb,Y\n")
    write(tmp_path / "test.csv", "c,X\nb,Y\n")
    with pytest.raises(ManifestError, match=r"'b'.*train\.csv:2.*test\.csv:2"):
        read_split_dir(tmp_path)


def test_split_dir_missing_files(tmp_path):
    write(tmp_path / "train.csv", "a,X\n")
    with pytest.raises(ManifestError, match=rf"{re.escape(str(tmp_path))}.*test\.csv"):
        read_split_dir(tmp_path)
    with pytest.raises(ManifestError, match="not found"):
        read_split_dir(tmp_path / "nope")


def test_class_list_bom_crlf(tmp_path):
    f = write(tmp_path / "stat.csv", "NEU\r\nHAP\r\nSAD\r\nFEA\r\nDIS\r\nANG\r\n", bom=True)
    assert read_class_list(f) == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    with pytest.raises(ManifestError, match=r"stat\.csv:2: duplicate"):
        read_class_list(write(tmp_path / "stat.csv", "A\nA\n"))


# ---------------------------------------------------------------- seeded splits


def make(n_per_class=(50, 30, 7, 1), groups_per_class=None):
    labels, groups = [], []
    for c, n in enumerate(n_per_class):
        for i in range(n):
            labels.append(c)
            groups.append(f"g{c}_{i % groups_per_class}" if groups_per_class else "")
    return labels, groups


def test_split_counts_preserve_total_and_train_first():
    assert split_counts(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert split_counts(1, (0.8, 0.1, 0.1)) == [1, 0, 0]
    assert split_counts(2, (0.8, 0.1, 0.1)) == [2, 0, 0]
    assert split_counts(1, (0.2, 0.4, 0.4)) == [1, 0, 0]
    for n in range(40):
        c = split_counts(n, (0.7, 0.15, 0.15))
        assert sum(c) == n and all(x >= 0 for x in c)


def test_stratified_deterministic_and_per_class_ratios():
    labels, groups = make()
    ratios = (0.7, 0.15, 0.15)
    a = stratified_split(labels, groups, ratios=ratios, seed=3, group_disjoint=False)
    assert a == stratified_split(labels, groups, ratios=ratios, seed=3, group_disjoint=False)
    assert a != stratified_split(labels, groups, ratios=ratios, seed=4, group_disjoint=False)
    for c, n in Counter(labels).items():
        counts = Counter(s for s, lab in zip(a, labels) if lab == c)
        for s, r in zip(("train", "val", "test"), ratios):
            assert abs(counts[s] - n * r) < 1 or n * r < 1, (c, s, counts)
        assert counts["train"] >= 1


def test_stratified_group_disjoint():
    labels, groups = make((60, 40, 30), groups_per_class=10)
    ratios = (0.6, 0.2, 0.2)
    a = stratified_split(labels, groups, ratios=ratios, seed=0, group_disjoint=True)
    assert a == stratified_split(labels, groups, ratios=ratios, seed=0, group_disjoint=True)
    assert a != stratified_split(labels, groups, ratios=ratios, seed=1, group_disjoint=True)
    where = {}
    for g, s in zip(groups, a):
        assert where.setdefault(g, s) == s
    counts = Counter(a)
    assert set(counts) == {"train", "val", "test"}
    for s, r in zip(("train", "val", "test"), ratios):
        assert abs(counts[s] - len(a) * r) <= 13  # within about one group of 13 samples


def test_group_disjoint_with_one_group_falls_back():
    labels, _ = make((10, 10))
    a = stratified_split(labels, ["one"] * len(labels), ratios=(0.8, 0.1, 0.1), seed=0, group_disjoint=True)
    assert "val" in a


def test_bad_ratios():
    labels, groups = make()
    for bad in [(0.8, 0.1), (0.8, 0.3, 0.1), (0.9, 0.0, 0.1), (1.1, 0.1, -0.2)]:
        with pytest.raises(ValueError, match="ratios"):
            stratified_split(labels, groups, ratios=bad, seed=0, group_disjoint=False)


def test_carve_val():
    labels, groups = make((50, 40, 20), groups_per_class=5)
    splits = ["test" if i % 5 == 0 else "train" for i in range(len(labels))]
    out = carve_val(labels, groups, splits, fraction=0.2, seed=1, group_disjoint=False)
    assert out == carve_val(labels, groups, splits, fraction=0.2, seed=1, group_disjoint=False)
    assert [s == "test" for s in out] == [s == "test" for s in splits]
    for c in range(3):
        n = sum(1 for lab, s in zip(labels, splits) if lab == c and s == "train")
        v = sum(1 for lab, s in zip(labels, out) if lab == c and s == "val")
        assert abs(v - 0.2 * n) < 1
    gd = carve_val(labels, groups, splits, fraction=0.2, seed=1, group_disjoint=True)
    val_groups = {g for g, s in zip(groups, gd) if s == "val"}
    train_groups = {g for g, s in zip(groups, gd) if s == "train"}
    assert val_groups and not val_groups & train_groups
    with pytest.raises(ValueError, match="fraction"):
        carve_val(labels, groups, splits, fraction=0, seed=1, group_disjoint=False)


def test_small_classes_balance_the_totals():
    labels = [c for c in range(6) for _ in range(5)]  # each class alone would round to 4/1/0
    a = stratified_split(labels, [""] * 30, ratios=(0.8, 0.1, 0.1), seed=0, group_disjoint=False)
    assert Counter(a) == {"train": 24, "val": 3, "test": 3}
