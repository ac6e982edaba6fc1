"""The deployment files under infra/deploy/ parse, validate against public schemas, and say what we mean.

Schemas: Kubernetes' own (kubernetes-validate, strict) for every pod template in the RayJob,
Ray's cluster-config schema (shipped with ray) for the `ray up` file, the Compose Specification
(vendored by check-jsonschema) for the MLflow server. KubeRay's CRD schema is not published in
a package, so the RayJob's own fields are checked explicitly. No docker engine runs here, so
the Dockerfiles are checked as text, not built.
"""

from __future__ import annotations

import json
import re
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from pipelines.cli import _parser

DEPLOY = Path(__file__).resolve().parents[2] / "infra" / "deploy"
PACKAGES = ["pipelines", "operators", "model", "infra"]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|_KEY$", re.IGNORECASE)


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / name).read_text())


# --- KubeRay RayJob ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return load("kuberay-rayjob.yaml")


def pod_templates(rayjob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    templates.update({g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]})
    return templates


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    return template["spec"]["containers"]


def test_rayjob_pod_templates_are_valid_kubernetes(rayjob: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for name, template in pod_templates(rayjob).items():
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template},
            "1.33", strict=True,
        )


def test_rayjob_runs_our_cli_on_a_token_authenticated_cluster_of_this_ray_version(rayjob: dict[str, Any]) -> None:
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    spec = rayjob["spec"]
    command = shlex.split(spec["entrypoint"])
    assert command[:3] == ["llama2", "run", "pretrain"]
    parsed = _parser().parse_args(command[1:])  # the entrypoint is a valid `llama2 run`
    assert any(o.startswith("runtime.store=/mnt/") for o in parsed.overrides)
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["rayVersion"] == ray.__version__


def test_rayjob_has_a_cpu_head_cpu_data_workers_and_gpu_training_workers(rayjob: dict[str, Any]) -> None:
    cluster = rayjob["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head.get("serviceType", "ClusterIP") == "ClusterIP"
    gpus = {name: [c["resources"]["limits"].get("nvidia.com/gpu") for c in containers(t)]
            for name, t in pod_templates(rayjob).items()}
    assert gpus["head"] == [None]
    cpu_groups = [n for n, g in gpus.items() if n != "head" and g == [None]]
    gpu_groups = [n for n, g in gpus.items() if n != "head" and g[0]]
    assert cpu_groups and gpu_groups
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        resources_ = containers(group["template"])[0]["resources"]
        assert resources_["requests"] == resources_["limits"], group["groupName"]  # guaranteed QoS, GPUs whole
    for name in gpu_groups:
        tolerations = pod_templates(rayjob)[name]["spec"]["tolerations"]
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def test_rayjob_images_are_pinned_builds_of_our_image(rayjob: dict[str, Any]) -> None:
    for name, template in pod_templates(rayjob).items():
        for container in containers(template):
            repo, _, tag = container["image"].rpartition(":")
            assert repo.endswith("/llama2-pipeline") and tag and tag != "latest", container["image"]
            has_gpu = "nvidia.com/gpu" in container["resources"]["limits"]
            assert tag.endswith("-gpu" if has_gpu else "-cpu"), (name, container["image"])


def test_rayjob_takes_every_credential_from_a_secret(rayjob: dict[str, Any]) -> None:
    for template in pod_templates(rayjob).values():
        for container in containers(template):
            env = {e["name"]: e for e in container.get("env", [])}
            assert "MLFLOW_TRACKING_URI" in env
            for name, entry in env.items():
                if SECRET_NAME.search(name) or name.endswith("USERNAME"):
                    assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], name
    assert "env_vars" in yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert not any(SECRET_NAME.search(k) for k in yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["env_vars"])


# --- `ray up` cluster config ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_yaml() -> dict[str, Any]:
    return load("ray-cluster.yaml")


def test_ray_up_config_validates_against_rays_schema(cluster_yaml: dict[str, Any]) -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(cluster_yaml, schema)


def test_ray_up_cluster_has_cpu_head_cpu_workers_and_gpu_workers_with_gpu_image(cluster_yaml: dict[str, Any]) -> None:
    types = cluster_yaml["available_node_types"]
    assert types[cluster_yaml["head_node_type"]]["resources"] == {"CPU": 0}
    workers = {n: t for n, t in types.items() if n != cluster_yaml["head_node_type"]}
    gpu = [t for t in workers.values() if t.get("docker", {}).get("worker_image", "").endswith("-gpu")]
    cpu = [t for t in workers.values() if "docker" not in t]
    assert gpu and cpu
    assert all(t["min_workers"] <= t["max_workers"] <= cluster_yaml["max_workers"] for t in workers.values())
    assert cluster_yaml["docker"]["image"].endswith("-cpu")


def test_ray_up_head_requires_the_token_and_keeps_the_dashboard_on_loopback(cluster_yaml: dict[str, Any]) -> None:
    head_start = " ".join(cluster_yaml["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "--env RAY_AUTH_MODE=token" in cluster_yaml["docker"]["run_options"]
    assert list(cluster_yaml["file_mounts"].values()) == ["~/.ray/auth_token"]  # copied from the operator's machine
    for rule in cluster_yaml["provider"]["security_group"]["IpPermissions"]:
        assert all(r["CidrIp"] != "0.0.0.0/0" for r in rule.get("IpRanges", []))


# --- MLflow server (compose) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load("mlflow-compose.yaml")


def test_compose_file_validates_against_the_compose_specification(compose: dict[str, Any]) -> None:
    pytest.importorskip("check_jsonschema")
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    jsonschema.validate(compose, json.loads(schema_file.read_text()))


def test_compose_publishes_ports_on_loopback_only(compose: dict[str, Any]) -> None:
    published = [(name, p) for name, s in compose["services"].items() for p in s.get("ports", [])]
    assert ("mlflow", "127.0.0.1:5000:5000") in published
    assert all(isinstance(p, str) and p.startswith("127.0.0.1:") for _, p in published), published
    assert "ports" not in compose["services"]["postgres"]


def test_mlflow_server_uses_postgres_object_store_artifacts_and_basic_auth(compose: dict[str, Any]) -> None:
    mlflow = compose["services"]["mlflow"]
    command, env = mlflow["command"], mlflow["environment"]
    assert "--app-name=basic-auth" in command
    assert "--artifacts-destination=s3://mlflow-artifacts" in command
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert set(mlflow["depends_on"]) == {"postgres", "create-bucket"}
    auth_ini = (DEPLOY / "mlflow-basic-auth.ini").read_text()
    assert not re.search(r"^\s*admin_password\s*=", auth_ini, re.MULTILINE)


def test_compose_takes_every_secret_from_the_environment(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) or "://" in str(value) and "@" in str(value):
                assert re.search(r"\$\{[A-Z_]+:\?", str(value)), f"{name}.{key} is not a required ${{VAR}}"
        assert not service.get("image", "").endswith(":latest")


# --- Container images ----------------------------------------------------------------------


def dockerfile_instructions(name: str) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / name).read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_image_installs_the_package_on_the_ray_base_image_of_this_version() -> None:
    instructions = dockerfile_instructions("Dockerfile")
    args = dict(a.split("=", 1) for op, a in instructions if op == "ARG" and "=" in a)
    assert args["BASE_IMAGE"] == f"rayproject/ray:{ray.__version__}-py311-cpu"
    assert ("FROM", "${BASE_IMAGE}") in instructions
    copied = {a.split()[-1].strip("./") for op, a in instructions if op == "COPY"}
    assert set(PACKAGES) <= copied
    run = " ".join(a for op, a in instructions if op == "RUN")
    assert 'pip install --no-cache-dir ".[cluster]"' in run and "llama2 --help" in run
    assert all(op != "USER" or a != "root" for op, a in instructions)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert all(f"!{package}/" in ignore for package in PACKAGES)


def test_no_deployment_file_carries_a_credential() -> None:
    for path in DEPLOY.iterdir():
        for op, argument in dockerfile_instructions(path.name) if "Dockerfile" in path.name else []:
            if op in ("ENV", "ARG"):
                assert not SECRET_NAME.search(argument.split("=")[0]), (path.name, argument)
        text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith(("#", ";")))
        assert "BEGIN" not in text and not re.search(r"AKIA[0-9A-Z]{16}", text), path.name
        for match in re.finditer(r"(?im)^[ \t-]*[\w.]*(?:password|secret|token)[\w.]*[ \t]*(?::[ \t]|=)[ \t]*(\S+)", text):
            value = match.group(1)
            assert value.startswith(("${", "{name:")), (path.name, match.group(0))  # ${ENV} or a secretKeyRef
