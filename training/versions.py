"""One policy for every command that writes a router: a new immutable version, installed only by
promotion.

- ``write``: the router goes to ``<runs dir>/<version>/`` (``SWITCHBOARD_RUNS_DIR``, default
  ``runs/`` at the repository root, not tracked by git) with its model card, is never written
  again, and is logged to MLflow as a new registered version of ``switchboard-router``.
- ``install``: the version becomes the champion: MLflow's ``champion`` alias moves to it
  (``previous-champion`` to the version it replaces) and it is copied into
  ``SWITCHBOARD_ROUTER_DIR``, which every replica picks up without a restart.
  ``switchboard rollback`` undoes the last install. Its default is the shipped, git-tracked
  ``models/router``: installing there rewrites tracked files (a warning says so); point
  ``SWITCHBOARD_ROUTER_DIR`` at a directory outside the checkout to keep them as shipped.

``switchboard train`` installs only with ``--install`` (a whole new router changes every
score), ``retrain`` only when its gate passes, ``models onboard`` and ``calibrate`` unless
``--no-install`` (adding a model leaves every other model's scores as they were).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.config import REPO_ROOT
from service.routing.learned import LearnedRouter
from training import model_card

log = logging.getLogger("switchboard.versions")
SHIPPED_ROUTER_DIR = REPO_ROOT / "models" / "router"


@dataclass
class Written:
    """A router version on disk and where MLflow holds it."""

    path: Path
    version: str
    mlflow: dict[str, Any]  # run_id, model_version (None: logged, not registered)


def replace_dir(source: Path, target: Path) -> None:
    """Put a copy of ``source`` at ``target``; readers see the old or the new, never a mix of
    files (a reader between the two renames finds nothing and retries later)."""
    staging = target.with_name(target.name + ".incoming")
    retired = target.with_name(target.name + ".outgoing")
    for leftover in (staging, retired):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.copytree(source, staging)
    if target.exists():
        target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)


def new_version(kind: str, runs_dir: Path) -> str:
    """A version string no run in ``runs_dir`` has used: time, then what made it."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    version, n = f"{stamp}-{kind}", 1
    while (runs_dir / version).exists():
        n += 1
        version = f"{stamp}-{kind}-{n}"
    return version


def write(
    router: LearnedRouter,
    kind: str,
    runs_dir: Path,
    params: dict[str, Any] | None = None,
    artifacts: Callable[[Path], list[Path]] | None = None,
    outcomes_path: Path | None = None,
    log_mlflow: bool = True,
) -> Written:
    """Save ``router`` as a new version (its ``version`` set here) with its model card and the
    files ``artifacts(directory)`` writes beside it, and log it all to MLflow."""
    version = new_version(kind, runs_dir)
    router.metadata.update(version=version, kind=kind)
    path = runs_dir / version
    router.save(path)
    files = [model_card.write(router, path), *(artifacts(path) if artifacts else [])]
    logged: dict[str, str] = {}
    if log_mlflow:
        from training import tracking

        logged = tracking.log_training(router, path, files, params or {}, outcomes_path)
    return Written(path, version, logged)


def install(written: Written, router_dir: Path) -> dict[str, Any]:
    """Make ``written`` the champion (MLflow alias) and the router every replica serves."""
    replaced = None
    if router_dir.resolve() == SHIPPED_ROUTER_DIR.resolve():
        log.warning(
            "installing into %s, the shipped router tracked by git: `git status` will show it "
            "changed; set SWITCHBOARD_ROUTER_DIR to a directory outside the checkout to keep "
            "the shipped files (docs/CLOSED_LOOP.md)",
            router_dir,
        )
    version = written.mlflow.get("model_version")
    if version:
        from training import tracking

        replaced = tracking.promote(str(version), router_dir)
    replace_dir(written.path, router_dir)
    return {"installed": written.version, "router_dir": str(router_dir), "replaced": replaced}
