"""The results files of every benchmark: ``<out>/<name>.md`` (the table it printed) and ``<out>/<name>.json``
(its numbers), ``<name>`` with ``_small`` appended for a ``--small`` smoke run (git-ignored:
``benchmarks/results/*_small.*``).

A benchmark script imports it as ``from _results import write_results`` (run as ``python benchmarks/<name>.py``,
its own folder is first on ``sys.path``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: str | Path, name: str, text: str, data: Any, small: bool = False) -> Path:
    """Write ``text`` (Markdown) and ``data`` (JSON, indent 1) as ``<out>/<name>[_small].{md,json}``, the folder
    made; each file ends with a newline. Returns the ``.md`` path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_small" if small else name
    (out / f"{stem}.md").write_text(text + "\n")
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    return out / f"{stem}.md"
