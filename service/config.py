"""Settings read from the environment (the only module that reads it)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """Where derived, rebuildable files go (embedding caches, the static token table)."""
    return Path(os.environ.get("SWITCHBOARD_CACHE_DIR") or REPO_ROOT / ".cache")
