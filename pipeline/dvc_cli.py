"""Running this environment's ``dvc`` from Python: the stages' interpreter first on PATH, output captured.

Used by the preset runner (:mod:`pipeline.presets`) and the experiment tools (:mod:`experiments.grid`).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

__all__ = ["DvcError", "dvc_env", "dvc"]


class DvcError(RuntimeError):
    """A dvc command failed (the message holds its output)."""


def dvc_env() -> dict[str, str]:
    """This interpreter's bin folder first on PATH (the stages run `python -m ...` in the venv); no analytics."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                DVC_NO_ANALYTICS="1", COLUMNS="400")


def dvc(args: Sequence[str], cwd: str | Path = ".", check: bool = True) -> subprocess.CompletedProcess:
    """Run ``dvc <args>`` with this interpreter's dvc; raise :class:`DvcError` (with its output) when it fails.

    Output goes through a temporary file, not a pipe: ``dvc queue start`` leaves a daemon worker holding
    the inherited descriptors, and reading a pipe would wait for that worker to exit."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=dvc_env(), stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        out.seek(0)
        proc.stdout, proc.stderr = out.read(), ""
    if check and proc.returncode != 0:
        raise DvcError(f"`dvc {shlex.join(args)}` failed (exit {proc.returncode}):\n{proc.stdout}")
    return proc
