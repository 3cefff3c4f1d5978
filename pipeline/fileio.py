"""Writing files so that nothing is ever half-written."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


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
