"""PixelByte: text and pixel images in one token stream."""
from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("pixelbyte")      # one source: pyproject.toml, through the installed metadata
except PackageNotFoundError:                # run from a source tree that was never installed
    __version__ = "0+unknown"


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The commit checked out at ``cwd`` (default: the current directory), or None outside a git
    checkout. The caller says which checkout: the package never looks for its own."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        return (out.stdout.strip() or None) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
