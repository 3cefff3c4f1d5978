"""Writing files and folders so that nothing is ever half-written, and JSON that strict parsers read."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield ``.tmp-<name>`` beside ``path`` to write; rename it to ``path`` when the block ends
    without error, delete it when it raises."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def remove_path(path: Path) -> None:
    """Delete a file, a link or a folder tree, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder ``.tmp-<name>`` beside ``path`` to fill; when the block ends without error it
    becomes ``path``, when it raises it is deleted and ``path`` is left as it was.

    An earlier ``path`` is first renamed ``.old-<name>``, then deleted once the new folder is in place, so at
    every moment ``path`` is absent or complete (the old or the new one). Leftovers of a run killed part-way
    are dealt with on entry: ``.tmp-<name>`` is deleted, and ``.old-<name>`` is renamed back to ``path`` if the
    kill came between the two renames (``path`` absent), else deleted.
    """
    path = Path(path)
    tmp, old = path.with_name(f".tmp-{path.name}"), path.with_name(f".old-{path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_path(tmp)
    if old.exists():
        if path.exists():
            remove_path(old)
        else:
            os.replace(old, path)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    remove_path(old)


def strict_json_value(obj: Any) -> Any:
    """``obj`` with every float that is not finite (nan, inf, -inf) replaced by None, in dicts, lists and
    tuples at any depth (numpy scalars are converted to Python numbers)."""
    if isinstance(obj, dict):
        return {k: strict_json_value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json_value(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():
        obj = obj.item()  # a numpy scalar or 0-d array
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps_strict(obj: Any, **kw) -> str:
    """``json.dumps`` of :func:`strict_json_value` of ``obj`` with ``allow_nan=False``: valid JSON (RFC 8259),
    which has no NaN or Infinity; an undefined number is written ``null``."""
    return json.dumps(strict_json_value(obj), allow_nan=False, **kw)


def write_json_strict(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """Write ``obj`` as strict JSON (:func:`dumps_strict`: non-finite floats become ``null``) to ``path``,
    atomically, with a final newline."""
    with atomic_path(path) as tmp:
        tmp.write_text(dumps_strict(obj, indent=indent, sort_keys=sort_keys) + "\n", encoding="utf-8")
