"""What prepare read, where DVC sees it: ``data/inputs/``, a link to every file the dataset lists outside ``prepare.root``.

DVC reruns a stage when a dependency named in dvc.yaml changes, and only then; ``prepare`` and ``extract``
depend on ``prepare.root``, which covers every clip of a folder layout (``cremad``, ``kinetics_sounds``) but
not the clips a ``csv`` root lists, nor the split lists of ``prepare.split_file`` (a nullable key, which
dvc.yaml cannot name). So prepare writes, beside the manifest, a folder of symbolic links, one per such file
(:func:`input_links`), which is an output of prepare (``cache: false``: in git, and ``persist``: no run-cache
entry, either of which would store copies of the clips) and a dependency of extract. DVC hashes
a linked file's content when it hashes the folder, with its own size/mtime/inode cache (only a changed file is
read again): new bytes in a listed clip or a split list mark ``prepare`` (its output changed) and ``extract``
(its dependency changed) stale in ``dvc status``, and ``dvc repro`` reruns them.

The folder always holds :data:`README` (git keeps no empty folder, and a teammate's clone needs it whole: it
is committed, like ``runs/*/metrics.json``). Links are relative when the listed path is (the project folder
can move), absolute when it is. A listed file that does not exist gets no link (prepare flags the clip).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from pipeline.fileio import staged_dir
from pipeline.manifest import ClipRecord, shard_key
from pipeline.splits import split_dir_files

README = "README.txt"
README_TEXT = (
    "Written by `python -m stages.prepare` (pipeline/inputs.py): one link per file that prepare read outside\n"
    "prepare.root (media/: the clips a csv root lists; lists/: the split lists of prepare.split_file). DVC\n"
    "hashes the files the links point to, so editing one reruns prepare and extract. Do not edit: commit it.\n"
)


def _inside(path: str, folder: str) -> bool:
    a, f = os.path.abspath(path), os.path.abspath(folder)
    return os.path.commonpath([a, f]) == f


def input_links(records: Sequence[ClipRecord], root: str, split_file: Optional[str]) -> dict[str, str]:
    """Link name (relative to the folder) -> the listed path it points to: every existing video and audio file of
    ``records`` outside ``root`` (all of them when ``root`` is a file: a CSV), and every split list."""
    links: dict[str, str] = {}
    root_dir = root if os.path.isdir(root) else None
    for r in records:
        for kind, path in (("video", r.video), ("audio", r.audio)):
            if kind == "audio" and path == r.video:
                continue
            if os.path.isfile(path) and not (root_dir and _inside(path, root_dir)):
                links[f"media/{shard_key(r.clip_id)}.{kind}{os.path.splitext(path)[1]}"] = path
    if split_file:
        for path in split_dir_files(split_file).values():
            links[f"lists/{os.path.basename(path)}"] = os.fspath(path)
    return links


def write_input_links(folder: str | os.PathLike, records: Sequence[ClipRecord], root: str,
                      split_file: Optional[str]) -> int:
    """Replace ``folder`` whole with :data:`README` and the links of :func:`input_links`; their number."""
    links = input_links(records, root, split_file)
    folder = Path(folder)
    with staged_dir(folder) as tmp:
        (tmp / README).write_text(README_TEXT)
        for name, target in sorted(links.items()):
            link = tmp / name
            link.parent.mkdir(exist_ok=True)
            # relative to where the link will be (folder/<sub>/), not where it is written (.tmp-<folder>/<sub>/)
            rel = target if os.path.isabs(target) else os.path.relpath(target, folder / os.path.dirname(name))
            os.symlink(rel, link)
    return len(links)
