"""Storage: WebDataset tar shards and the h5 index that locates every member in them.

Paired writers and a reader, as Lhotse pairs them:

- :class:`ShardWriter` writes one ``<split>-NNNNNN.tar`` deterministically (fixed mtime,
  owner and mode; members in a fixed order) under a temporary name and renames it on
  :meth:`ShardWriter.commit`.
- :func:`write_index` writes ``index.h5``; :class:`IndexReader` reads it and fetches any
  member with one seek, no tar parsing.

Index schema (format version :data:`FORMAT_VERSION`), N samples, M members per sample,
P shards:

================  ===========  ===========================================================
dataset           shape/dtype  meaning
================  ===========  ===========================================================
key               N str        WebDataset key (``__key__``) of the sample
clip_id           N str        the dataset's clip id
split             N uint8      index into attribute ``splits`` (train, val, test)
label             N int32      class index into attribute ``class_names``
shard             N int32      row of the sample's shard in the ``shard_*`` datasets
position          N int32      the sample's position inside its shard
offset            N×M int64    byte offset of each member's data inside the tar
size              N×M int64    byte size of each member's data
shard_name        P str        file name, e.g. ``train-000000.tar``
shard_split       P uint8      index into ``splits``
shard_number      P int32      the NNNNNN of the name
shard_samples     P int32      samples in the shard
shard_bytes       P int64      file size
shard_sha256      P str        hex SHA-256 of the file
================  ===========  ===========================================================

Attributes: ``format_version`` (int), ``splits``, ``members`` (member extensions in
order, e.g. ``["json", "cls", "mel.npy", "frame0.jpg", ...]``; raw frames: ``frame0.npy``, ...), ``class_names``,
``feature_params`` (the ``features`` params as JSON). Rows are ordered by split, shard
number and position, so the file's bytes depend only on its content.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.fileio import atomic_path
from pipeline.manifest import SPLITS

FORMAT_VERSION = 1
TAR_MTIME = 0  # every member's mtime: the bytes must not depend on when they were written
# features.frame_codec -> the extension of its frame members ``frame<i>.<ext>``: a JPEG, or a raw uint8
# [H, W, 3] array in .npy format. Readers dispatch on the extension, so a shard set describes itself.
FRAME_EXTENSIONS = {"jpeg": "jpg", "raw": "npy"}


def frame_codec_of(member: str) -> str | None:
    """``frame2.jpg`` -> ``jpeg``, ``frame0.npy`` -> ``raw``; None for a member that is no frame."""
    stem, _, ext = member.partition(".")
    if not (stem.startswith("frame") and stem[len("frame"):].isdigit()):
        return None
    return {e: c for c, e in FRAME_EXTENSIONS.items()}.get(ext)


def shard_name(split: str, number: int) -> str:
    """``train``, 3 -> ``train-000003.tar``."""
    return f"{split}-{number:06d}.tar"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class ShardEntry:
    """One shard of the index's shard table."""

    name: str
    split: str
    number: int
    samples: int
    bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class IndexRow:
    """One sample of the index: where each of its members lies in its shard."""

    key: str
    clip_id: str
    split: str
    label: int
    shard_number: int  # the NNNNNN of its shard's name (the writer maps it to a shard-table row)
    position: int
    offsets: tuple[int, ...]  # per member, data offset in the tar (bytes)
    sizes: tuple[int, ...]  # per member, data size (bytes)


class ShardWriter:
    """Write one tar shard under ``.tmp-<name>``; :meth:`commit` renames it into place."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".tmp-{self.path.name}")
        self._tar = tarfile.open(self.tmp, "w", format=tarfile.GNU_FORMAT)
        self.samples = 0

    def write(self, key: str, members: Sequence[tuple[str, bytes]]) -> tuple[list[int], list[int]]:
        """Append one sample (``(extension, data)`` pairs, in order); return member offsets and sizes."""
        offsets, sizes = [], []
        for ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
            # the tar's offset is now past the data, padded to a 512-byte block
            offsets.append(self._tar.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE)
            sizes.append(len(data))
        self.samples += 1
        return offsets, sizes

    def close(self) -> None:
        self._tar.close()

    def commit(self, split: str, number: int) -> ShardEntry:
        """Close, hash and rename the shard into place; return its shard-table entry."""
        self.close()
        entry = ShardEntry(self.path.name, split, number, self.samples, self.tmp.stat().st_size, sha256_file(self.tmp))
        os.replace(self.tmp, self.path)
        return entry

    def abort(self) -> None:
        """Close and delete the temporary file."""
        self.close()
        self.tmp.unlink(missing_ok=True)


def _str_dataset(f, name: str, values: Sequence[str]) -> None:
    f.create_dataset(name, data=np.array(values, dtype=object), dtype=_h5_str(), track_times=False)


def _h5_str():
    import h5py

    return h5py.string_dtype("utf-8")


def write_index(
    path: str | os.PathLike,
    rows: Sequence[IndexRow],
    shards: Sequence[ShardEntry],
    *,
    members: Sequence[str],
    class_names: Sequence[str],
    feature_params: dict,
) -> None:
    """Write ``index.h5`` atomically; its bytes depend only on the arguments' content."""
    import h5py

    split_code = {s: i for i, s in enumerate(SPLITS)}
    shards = sorted(shards, key=lambda s: (split_code[s.split], s.number))
    shard_row = {(s.split, s.number): i for i, s in enumerate(shards)}
    rows = sorted(rows, key=lambda r: (split_code[r.split], r.shard_number, r.position))
    m = len(members)
    with atomic_path(path) as tmp, h5py.File(tmp, "w", libver=("earliest", "v110"), track_order=False) as f:
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["splits"] = json.dumps(list(SPLITS))
        f.attrs["members"] = json.dumps(list(members))
        f.attrs["class_names"] = json.dumps(list(class_names))
        f.attrs["feature_params"] = json.dumps(feature_params, sort_keys=True)
        _str_dataset(f, "key", [r.key for r in rows])
        _str_dataset(f, "clip_id", [r.clip_id for r in rows])
        ds = dict(track_times=False)
        f.create_dataset("split", data=np.array([split_code[r.split] for r in rows], np.uint8), **ds)
        f.create_dataset("label", data=np.array([r.label for r in rows], np.int32), **ds)
        f.create_dataset("shard", data=np.array([shard_row[(r.split, r.shard_number)] for r in rows], np.int32), **ds)
        f.create_dataset("position", data=np.array([r.position for r in rows], np.int32), **ds)
        f.create_dataset("offset", data=np.array([r.offsets for r in rows], np.int64).reshape(-1, m), **ds)
        f.create_dataset("size", data=np.array([r.sizes for r in rows], np.int64).reshape(-1, m), **ds)
        _str_dataset(f, "shard_name", [s.name for s in shards])
        f.create_dataset("shard_split", data=np.array([split_code[s.split] for s in shards], np.uint8), **ds)
        f.create_dataset("shard_number", data=np.array([s.number for s in shards], np.int32), **ds)
        f.create_dataset("shard_samples", data=np.array([s.samples for s in shards], np.int32), **ds)
        f.create_dataset("shard_bytes", data=np.array([s.bytes for s in shards], np.int64), **ds)
        _str_dataset(f, "shard_sha256", [s.sha256 for s in shards])


class IndexReader:
    """The whole index in memory (numpy arrays), plus seek-only member reads.

    Construct it in the parent process; reads open the shard per call, so it is safe to
    use from forked DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike, shard_dir: str | os.PathLike | None = None):
        import h5py

        self.path = Path(path)
        self.shard_dir = Path(shard_dir) if shard_dir is not None else self.path.parent
        where = "" if self.path.is_absolute() else f" (in {Path.cwd()})"
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}{where}: feature index not found: run `dvc repro extract` to "
                                    f"extract the features, or `dvc checkout {self.path.parent.as_posix()}` to "
                                    f"restore them from the DVC cache")
        try:
            f = h5py.File(self.path, "r")
        except OSError as err:
            raise ValueError(f"{self.path}: not a readable feature index ({err}): run `dvc repro extract` again, "
                             f"or `dvc checkout {self.path.parent.as_posix()}`") from None
        with f:
            if "format_version" not in f.attrs:
                raise ValueError(f"{self.path}: an HDF5 file but no feature index (no format_version): "
                                 f"run `dvc repro extract` again")
            self.format_version = int(f.attrs["format_version"])
            if self.format_version != FORMAT_VERSION:
                raise ValueError(
                    f"{self.path}: index format version {self.format_version}, this avremix reads "
                    f"{FORMAT_VERSION}: run extract again"
                )
            self.splits = tuple(json.loads(f.attrs["splits"]))
            self.members = tuple(json.loads(f.attrs["members"]))
            self.class_names = tuple(json.loads(f.attrs["class_names"]))
            self.feature_params = json.loads(f.attrs["feature_params"])
            self.keys = f["key"].asstr()[:]
            self.clip_ids = f["clip_id"].asstr()[:]
            self.split = f["split"][:]  # [N]
            self.label = f["label"][:]  # [N]
            self.shard = f["shard"][:]  # [N]
            self.position = f["position"][:]  # [N]
            self.offset = f["offset"][:]  # [N, M]
            self.size = f["size"][:]  # [N, M]
            self.shard_names = f["shard_name"].asstr()[:]
            self.shard_split = f["shard_split"][:]
            self.shard_number = f["shard_number"][:]
            self.shard_samples = f["shard_samples"][:]
            self.shard_bytes = f["shard_bytes"][:]
            self.shard_sha256 = f["shard_sha256"].asstr()[:]

    def __len__(self) -> int:
        return len(self.keys)

    def verify(self, splits: Sequence[str] | None = None, *, content: bool = True) -> None:
        """Check that the shards of ``splits`` (default all) are the ones this index describes.

        Every shard must exist under its indexed name with its indexed size, and with ``content``
        its SHA-256 must match too. Raises FileNotFoundError or ValueError naming the shard.
        """
        wanted = range(len(self.splits)) if splits is None else [self.splits.index(s) for s in splits]
        for j in np.flatnonzero(np.isin(self.shard_split, list(wanted))):
            path = self.shard_dir / self.shard_names[j]
            if not path.is_file():
                raise FileNotFoundError(f"{path}: shard listed in {self.path} is missing (moved, renamed or deleted?); "
                                        f"run extract again or restore it (dvc pull / dvc checkout)")
            if path.stat().st_size != self.shard_bytes[j]:
                raise ValueError(f"{path}: {path.stat().st_size} bytes, {self.path} expects {self.shard_bytes[j]}: "
                                 f"the shard and the index come from different extractions")
            if content and sha256_file(path) != self.shard_sha256[j]:
                raise ValueError(f"{path}: SHA-256 differs from the one in {self.path}: the shard and the index "
                                 f"come from different extractions, or the shard is corrupt")

    @property
    def frame_members(self) -> tuple[str, ...]:
        """The frame members (``frame<i>.jpg`` or ``frame<i>.npy``), in frame order."""
        frames = [m for m in self.members if frame_codec_of(m) is not None]
        return tuple(sorted(frames, key=lambda m: int(m.partition(".")[0][len("frame"):])))

    @property
    def frame_codec(self) -> str:
        """``jpeg`` or ``raw``: how the frames are stored, read from the members' extensions (one codec per set)."""
        codecs = {frame_codec_of(m) for m in self.frame_members}
        if len(codecs) != 1:
            raise ValueError(f"{self.path}: members {self.members} hold no frames or mix frame codecs {sorted(codecs)}")
        return codecs.pop()

    def indices(self, split: str) -> np.ndarray:
        """Row numbers of one split, in index order."""
        return np.flatnonzero(self.split == self.splits.index(split))

    def shard_path(self, row: int) -> Path:
        return self.shard_dir / self.shard_names[self.shard[row]]

    def read_member(self, row: int, member: str) -> bytes:
        """The bytes of one member of sample ``row``, read with one seek."""
        j = self.members.index(member)
        with open(self.shard_path(row), "rb") as f:
            f.seek(int(self.offset[row, j]))
            data = f.read(int(self.size[row, j]))
        if len(data) != self.size[row, j]:
            raise ValueError(f"{self.shard_path(row)}: truncated, member {self.keys[row]}.{member} is cut short")
        return data

    def read_members(self, rows: Sequence[int], member: str) -> list[bytes]:
        """:meth:`read_member` of each of ``rows`` (a remote index reads them in parallel)."""
        return [self.read_member(int(r), member) for r in rows]

    def read_sample(self, row: int) -> dict[str, bytes]:
        """All members of sample ``row`` (one open, one seek per member)."""
        out = {}
        with open(self.shard_path(row), "rb") as f:
            for j, member in enumerate(self.members):
                f.seek(int(self.offset[row, j]))
                out[member] = f.read(int(self.size[row, j]))
        return out
