"""Atomic writes: the target appears only complete; a failed write leaves neither it nor a temporary file."""
import pytest

from pipeline.fileio import atomic_path


def test_atomic_path_renames_on_success(tmp_path):
    with atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("done")
        assert not (tmp_path / "out.txt").exists()  # not visible before the block ends
    assert (tmp_path / "out.txt").read_text() == "done" and list(tmp_path.iterdir()) == [tmp_path / "out.txt"]


def test_atomic_path_keeps_the_old_file_and_cleans_up_on_error(tmp_path):
    (tmp_path / "out.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert (tmp_path / "out.txt").read_text() == "old" and list(tmp_path.iterdir()) == [tmp_path / "out.txt"]
