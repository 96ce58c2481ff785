"""MLflow tracking of training runs and the model registry (MLflow lives only in training/).

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else a local SQLite store ``mlflow.db`` at
the repository root (``mlflow ui`` started there shows it). Every run logs parameters, dataset
hashes, the git commit, metrics, plots and the model card, and registers the router as a
version of ``switchboard-router``; a retraining run registers its challenger only when the gate
passed (a failed challenger stays a run, its router logged there but not a model version), and
carries the tag ``promoted`` (``true`` once installed). The alias ``champion`` moves only when
a version is installed (``promote``, called by training.versions.install),
``previous-champion`` to the one it replaced.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd

from service.config import REPO_ROOT
from service.routing.learned import LearnedRouter

REGISTERED_MODEL = "switchboard-router"
EXPERIMENT = "switchboard-router"
CHAMPION = "champion"
PREVIOUS = "previous-champion"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class RouterModel(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    """The router as an MLflow pyfunc model: prompts in, P(pass) per model out."""

    def load_context(self, context: Any) -> None:
        self.router = LearnedRouter.load(Path(context.artifacts["router"]))

    def predict(self, context, model_input, params=None):
        # no type hints: MLflow would read them as an input schema
        if isinstance(model_input, pd.DataFrame):
            prompts = model_input["prompt"].tolist()
        else:
            prompts = list(model_input)
        p = self.router.p_pass(prompts, self.router.models)
        return pd.DataFrame(p, columns=self.router.models)


def _log_router(router_dir: Path, register: bool = True) -> str | None:
    """Log the router directory as a pyfunc model in the active run and, with ``register``,
    register it; the new registered version (None when not registered)."""
    info = mlflow.pyfunc.log_model(
        name="router",
        python_model=RouterModel(),
        artifacts={"router": str(router_dir)},
        pip_requirements=[],
        registered_model_name=REGISTERED_MODEL if register else None,
    )
    return str(info.registered_model_version) if register else None


def _use_experiment() -> None:
    """Point MLflow at the tracking store; artifacts of a local SQLite store live beside it."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None and uri.startswith("sqlite:///"):
        artifacts = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())
    mlflow.set_experiment(EXPERIMENT)


def _flatten(prefix: str, summary: dict[str, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for key in ("mean_aiq", "mean_heuristic_aiq", "log_loss", "ece", "fit_seconds"):
        if key in summary:
            metrics[f"{prefix}{key}"] = float(summary[key])
    for source, result in summary.get("sources", {}).items():
        for router in ("learned", "heuristic", "zero", "oracle"):
            for name, value in result[router].items():
                if value is not None:
                    metrics[f"{prefix}{source}.{router}.{name}"] = float(value)
    return metrics


def log_training(
    router: LearnedRouter,
    router_dir: Path,
    artifacts: list[Path],
    params: dict[str, Any],
    outcomes_path: Path | None,
) -> dict[str, str]:
    """Log one training run (or onboarding) and register the router as a new version; the
    ``champion`` alias does not move (installing a version does)."""
    _use_experiment()
    meta = router.metadata
    with mlflow.start_run(run_name=f"{meta.get('kind', 'train')}-{router.version}") as run:
        mlflow.log_params({**params, "default_threshold": router.default_threshold})
        tags = {
            "code_version": meta.get("code_version", "unknown"),
            "outcomes_table_sha256": meta.get("data_sha256", ""),
            "router_version": router.version,
            "learner": meta.get("learner", ""),
            "kind": meta.get("kind", "train"),
        }
        if outcomes_path is not None:
            tags["outcomes_file_sha256"] = file_sha256(outcomes_path)
        mlflow.set_tags(tags)
        for name, summary in meta.get("validation", {}).items():
            mlflow.log_metrics(_flatten(f"val.{name}.", summary))
        mlflow.log_metrics(_flatten("test.", meta.get("test", {})))
        if "beats_heuristic_on_validation" in meta:
            mlflow.log_metric(
                "beats_heuristic_on_validation", float(meta["beats_heuristic_on_validation"])
            )
        for path in artifacts:
            mlflow.log_artifact(str(path))
        version = _log_router(router_dir)
    return {
        "run_id": run.info.run_id,
        "model_version": str(version),
        "tracking_uri": tracking_uri(),
    }


def promote(version: str, installed_dir: Path) -> str | None:
    """Move ``champion`` to registered ``version`` and ``previous-champion`` to the version it
    replaces: the router installed in ``installed_dir``, registered first if no version holds
    it (a router shipped in the repository, say), so that rollback can return to it. Returns
    the replaced version."""
    _use_experiment()
    client = mlflow.MlflowClient()
    current = champion_version()
    if (installed_dir / "router.json").exists():
        installed = LearnedRouter.load(installed_dir)
        if current is None or _version_of_router(client, current) != installed.version:
            current = _register(installed, installed_dir, f"champion-{installed.version}")
    if current is not None and current != version:
        client.set_registered_model_alias(REGISTERED_MODEL, PREVIOUS, current)
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, version)
    return current


def champion_version() -> str | None:
    """The registered version the ``champion`` alias points at, if any."""
    mlflow.set_tracking_uri(tracking_uri())
    try:
        client = mlflow.MlflowClient()
        return str(client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION).version)
    except mlflow.exceptions.MlflowException:
        return None


def _register(router: LearnedRouter, router_dir: Path, run_name: str) -> str:
    """Log ``router_dir`` as a new version of the registered model; its version number."""
    with mlflow.start_run(run_name=run_name, nested=mlflow.active_run() is not None):
        mlflow.set_tags({"router_version": router.version})
        return str(_log_router(router_dir))


def _version_of_router(client: Any, version: str) -> str | None:
    run_id = client.get_model_version(REGISTERED_MODEL, version).run_id
    return mlflow.get_run(run_id).data.tags.get("router_version") if run_id else None


def log_retraining(
    challenger: LearnedRouter, challenger_dir: Path, champion: LearnedRouter, report: dict[str, Any]
) -> dict[str, str | None]:
    """Log a retraining cycle (gate, test metrics of both routers, off-policy estimates with
    their intervals and effective sample sizes) and register the challenger when the gate
    passed; the run's tag ``promoted`` is ``false`` until ``set_promoted`` (installing it, if
    the gate passed, is the caller's). ``model_version`` is None when not registered."""
    _use_experiment()
    gate = report["gate"]
    traffic = report.get("traffic", {})
    with mlflow.start_run(run_name=f"retrain-{challenger.version}") as run:
        mlflow.log_params(
            {
                "snapshot_sha256": report["snapshot_sha256"],
                "traffic_outcomes": report["traffic_outcomes"],
                "traffic_held_out_rows_dropped": traffic.get("held_out_rows_dropped", 0),
                "traffic_held_out_prompts_dropped": traffic.get("held_out_prompts_dropped", 0),
                "traffic_test_requests_in_gate": gate.get("traffic_test_requests", 0),
                "gate_margin": gate["margin"],
                "gate_confidence": gate["confidence"],
                "gate_power": gate.get("power"),
                "champion_version": champion.version,
            }
        )
        mlflow.set_tags(
            {
                "router_version": challenger.version,
                "gate": "passed" if gate["passed"] else "failed",
                "gate_quality_verdict": gate.get("quality_verdict", ""),
                "gate_cost_verdict": gate.get("cost_verdict", ""),
                "gate_reason": gate["reason"][:5000],
                "promoted": "false",
                "registered": "true" if gate["passed"] else "false",
            }
        )
        metrics = {f"gate.{k}": float(v) for k, v in gate.items() if isinstance(v, (int, float))}
        metrics |= _flatten("challenger.test.", report["challenger"]["test"])
        metrics |= _flatten("champion.test.", report["champion"]["test"])
        metrics |= off_policy_metrics(report["off_policy"])
        mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})  # drop NaN
        mlflow.log_dict(report, "retrain-report.json")
        version = _log_router(challenger_dir, register=bool(gate["passed"]))
    return {"run_id": run.info.run_id, "model_version": version}


OFF_POLICY_FIELDS = {
    "value": "",
    "ci_low": ".ci_low",
    "ci_high": ".ci_high",
    "se": ".se",
    "effective_sample_size": ".ess",
    "explored_agreeing": ".explored_agreeing",
}


def off_policy_metrics(off_policy: dict[str, Any]) -> dict[str, float]:
    """``ope.<policy>.<metric>.<method>`` (the value) and its ``.ci_low``, ``.ci_high``,
    ``.se``, ``.ess`` (effective sample size) and ``.explored_agreeing``; a withheld estimate
    (not enough overlap) logs its effective sample size and explored requests, no value."""
    metrics: dict[str, float] = {}
    for policy, estimate in off_policy.items():
        if not isinstance(estimate, dict):
            continue
        for target in ("quality", "cost_usd"):
            for method, value in estimate.get(target, {}).items():
                name = f"ope.{policy}.{target}.{method}"
                for key, suffix in OFF_POLICY_FIELDS.items():
                    if value.get(key) is not None:
                        metrics[name + suffix] = float(value[key])
    return metrics


def set_promoted(run_id: str, promoted: bool) -> None:
    """Tag a retraining run ``promoted`` = ``true`` or ``false``."""
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.MlflowClient().set_tag(run_id, "promoted", "true" if promoted else "false")


def restore_previous_champion(into: Path) -> dict[str, Any]:
    """Swap the ``champion`` and ``previous-champion`` aliases and download the restored
    router into ``into``; returns its directory and versions."""
    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.MlflowClient()
    try:
        previous = client.get_model_version_by_alias(REGISTERED_MODEL, PREVIOUS).version
    except mlflow.exceptions.MlflowException:
        raise ValueError("no previous champion to roll back to") from None
    current = champion_version()
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{REGISTERED_MODEL}/{previous}", dst_path=str(into)
        )
    )
    router_dir = next(local.rglob("router.json")).parent
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, str(previous))
    if current is not None:
        client.set_registered_model_alias(REGISTERED_MODEL, PREVIOUS, current)
    return {"router_dir": router_dir, "champion_version": str(previous), "replaced": current}
