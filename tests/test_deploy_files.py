"""The deployment files, checked by parsing (Docker cannot run where the tests run): the image
is CPU-only with the model inside, runs as a non-root user and has a health check; the compose
file runs PostgreSQL, MLflow on PostgreSQL and two replicas behind a load balancer."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest))
    return out


def test_the_image_is_cpu_only_non_root_and_health_checked():
    steps = instructions()
    keywords = [k for k, _ in steps]
    assert keywords[0] == "FROM" and set(keywords) <= {
        "FROM", "ENV", "RUN", "WORKDIR", "COPY", "USER", "EXPOSE", "HEALTHCHECK", "CMD",
    }  # fmt: skip
    runs = " ".join(rest for k, rest in steps if k == "RUN")
    assert "download.pytorch.org/whl/cpu torch==2.13.0" in runs  # never the CUDA build
    assert "StaticMiniLMEmbedder" in runs  # the model's table is built into the image
    users = [rest for k, rest in steps if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(k == "HEALTHCHECK" and "/readyz" in rest for k, rest in steps)
    copied = " ".join(rest for k, rest in steps if k == "COPY")
    for needed in ("models", "datasets/outcomes.parquet", "service", "switchboard"):
        assert needed in copied
    for source in (r.split()[0] for k, r in steps if k == "COPY" and "--from" not in r):
        assert (ROOT / source).exists(), source


def test_compose_runs_two_replicas_on_postgres_with_mlflow_behind_a_balancer():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    replicas = [name for name, s in services.items() if name.startswith("switchboard-")]
    assert len(replicas) == 2
    for name in replicas:
        env = services[name]["environment"]
        assert env["SWITCHBOARD_DATABASE_URL"].startswith("postgresql://")
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "postgresql://" in services["mlflow"]["command"]
    assert services["postgres"]["healthcheck"]
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert all(f"server {name}:8000" in nginx for name in replicas)
    assert "proxy_buffering off" in nginx  # streams pass through
    for volume in services["postgres"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists()


def test_the_deployment_guide_lists_every_setting_with_its_default():
    from service.config import Settings

    guide = (ROOT / "docs" / "DEPLOY.md").read_text()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        env = alias.choices[0] if alias is not None else f"SWITCHBOARD_{name.upper()}"
        assert f"| `{env}` |" in guide, env
