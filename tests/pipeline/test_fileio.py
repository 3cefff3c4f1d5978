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


def test_staged_dir_replaces_the_folder_only_when_complete(tmp_path):
    from pipeline.fileio import staged_dir

    out = tmp_path / "eval"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_dir(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("failed mid-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"] and (out / "old.txt").exists()
    with staged_dir(out) as tmp:
        assert tmp.name == ".tmp-eval" and list(tmp.iterdir()) == [] and (out / "old.txt").exists()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"] and [p.name for p in out.iterdir()] == ["new.txt"]


def test_staged_dir_cleans_up_after_a_killed_run(tmp_path):
    from pipeline.fileio import staged_dir

    out, tmp, old = tmp_path / "eval", tmp_path / ".tmp-eval", tmp_path / ".old-eval"
    tmp.mkdir()
    (tmp / "half.txt").write_text("half")  # killed while writing
    old.mkdir()
    (old / "old.txt").write_text("old")  # killed between moving the old folder aside and the new one in
    with staged_dir(out) as staging:
        assert (out / "old.txt").exists() and list(staging.iterdir()) == []  # the old one back under its name
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"] and [p.name for p in out.iterdir()] == ["new.txt"]
