"""Every input a stage reads is a DVC dependency: the clips a CSV lists and the split lists (real dvc, tiny data).

Issue 20's defect 1: with ``prepare.dataset: csv`` DVC tracked the CSV but not the clips it lists, and not the
contents of ``prepare.split_file``: new bytes in a listed WAV left ``dvc status`` "up to date" and the old
features in place. Prepare now writes ``data/inputs/``, a link to each file it read outside ``prepare.root``
(pipeline/inputs.py), which DVC hashes through the links: a prepare output and an extract dependency.
"""
from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

from pipeline.manifest import read_manifest, shard_key
from tests.test_dvc import CHECK, dvc, edit_params, project, ran  # noqa: F401, F811  (project: the fixture)

PIPELINE = ("check", "prepare", "extract")


def stale(repo: Path) -> set[str]:
    """The stages of :data:`PIPELINE` that `dvc status` names (synth and training are not run here)."""
    return set(json.loads(dvc(repo, "status", "--json", *PIPELINE)))


def shards(repo: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((repo / "features").glob("*.tar"))}


def shards_holding(repo: Path, clip_id: str) -> set[str]:
    key = shard_key(clip_id)
    found = set()
    for p in (repo / "features").glob("*.tar"):
        with tarfile.open(p) as tar:
            if any(name.split(".")[0] == key for name in tar.getnames()):
                found.add(p.name)
    return found


def write_lists(folder: Path, train: list[str], test: list[str]) -> None:
    folder.mkdir(exist_ok=True)
    for name, ids in (("train.csv", train), ("test.csv", test)):
        (folder / name).write_text("".join(f"{i},{i.split('_')[2]}\n" for i in ids))


def test_a_changed_listed_clip_or_split_list_reruns_prepare_and_extract(project, cremad_raw):
    shutil.copytree(cremad_raw, project / "mydata" / "clips")
    ids = sorted(p.stem for p in (project / "mydata" / "clips" / "VideoFlash").glob("*.flv"))
    (project / "mydata" / "clips.csv").write_text("video,audio,label\n" + "".join(
        f"clips/VideoFlash/{i}.flv,clips/AudioWAV/{i}.wav,{i.split('_')[2]}\n" for i in ids))
    write_lists(project / "mylists", ids[:8], ids[8:])
    edit_params(project, prepare__dataset="csv", prepare__root="mydata/clips.csv", prepare__split_file="mylists",
                prepare__group_disjoint=False)
    assert ran(dvc(project, "repro", "extract")) == [CHECK, "prepare", "extract"]  # no synth: the root is not its
    links = sorted(p.relative_to(project / "data" / "inputs") for p in (project / "data" / "inputs").rglob("*")
                   if p.is_symlink())
    assert len(links) == 2 * len(ids) + 2, links  # each clip's video and audio, train.csv and test.csv
    assert stale(project) == set()
    manifest, before = (project / "data" / "manifest.csv").read_bytes(), shards(project)

    # new bytes in one listed WAV (another clip's audio): prepare and extract are stale, nothing else
    victim = next(r.clip_id for r in read_manifest(project / "data" / "manifest.csv") if r.split == "train")
    wav = project / "mydata" / "clips" / "AudioWAV" / f"{victim}.wav"
    wav.write_bytes((project / "mydata" / "clips" / "AudioWAV" / f"{ids[-1]}.wav").read_bytes())
    assert stale(project) == {"prepare", "extract"}
    assert ran(dvc(project, "repro", "extract")) == ["prepare", "extract"]
    assert stale(project) == set()
    assert (project / "data" / "manifest.csv").read_bytes() == manifest  # the same list of clips
    after = shards(project)
    assert before.keys() == after.keys()
    holding = shards_holding(project, victim)
    assert holding and {name for name in after if after[name] != before[name]} == holding  # that one only

    # a split list edited: the last train clip moves to test
    write_lists(project / "mylists", ids[:7], ids[7:])
    assert stale(project) == {"prepare", "extract"}
    assert ran(dvc(project, "repro", "extract")) == ["prepare", "extract"]
    assert {r.clip_id: r.split for r in read_manifest(project / "data" / "manifest.csv")}[ids[7]] == "test"
    assert stale(project) == set()
