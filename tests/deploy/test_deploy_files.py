"""What an operator relies on in docker/ and k8s/: the files parse, every image is pinned, the
registry's containers are configured only through the environment names of the contract
(CONTRACT.md §8), the probes hit the health routes, and each process gets a real subcommand.

Kubernetes manifests are validated against the API schemas when `kubernetes-validate` is
installed (it ships the schemas, so this works offline); otherwise only structurally. CRDs it
does not know (KEDA's ScaledObject) are checked by hand in test_k8s_scaling.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from app.cli import main as cli_main
from tests.deploy.deployfiles import (
    COMPOSE_APP_SERVICES,
    COMPOSE_FILE,
    CONTRACT_ENV,
    CONTRACT_FILE,
    CONTRACT_METRICS,
    DOCKER_DIR,
    DOCKERFILE,
    IMAGE_RUNTIME_ENV,
    K8S_DIR,
    LIVE_PATH,
    NAMESPACE,
    READY_PATH,
    REGISTRY_UID,
    REPO,
    SUBCOMMANDS,
    app_services,
    compose,
    containers,
    contract_env,
    dockerfile_env_names,
    dockerfile_final_stage,
    dockerfile_from_images,
    env_name_allowed,
    exec_form,
    image_is_pinned,
    k8s_docs,
    k8s_of_kind,
    load_yaml_docs,
    parse_contract_env,
    parse_contract_metrics,
    pod_specs,
    yaml_files,
)

# ---------------------------------------------------------------------------------------------
# the helpers' own rules (so a loosened regex cannot turn the checks below into no-ops)


@pytest.mark.parametrize(
    ("ref", "pinned"),
    [
        ("postgres:16.6-bookworm", True),
        ("nats:2.10.24-alpine", True),
        ("minio/minio:RELEASE.2024-11-07T00-52-20Z", True),
        ("ghcr.io/llm-registry/llm-registry:0.1.0", True),
        ("localhost:5000/llm-registry:1.2.3", True),
        ("redis:7.4.1@sha256:" + "a" * 64, True),
        ("postgres", False),
        ("postgres:latest", False),
        ("postgres:16", False),
        ("postgres:16-alpine", False),
        ("localhost:5000/llm-registry", False),
        ("ghcr.io/llm-registry/llm-registry:${TAG:-0.1.0}", False),
    ],
)
def test_image_pin_rule(ref: str, pinned: bool) -> None:
    assert image_is_pinned(ref) is pinned


# ---------------------------------------------------------------------------------------------
# contract env list


def test_contract_env_copy_is_current() -> None:
    if not CONTRACT_FILE.is_file():
        # Without the contract beside the repo the copy is all there is; it must still be sane.
        assert {"DATABASE_URL", "JWT_SECRET", "BLOB_STORE_URL"} <= CONTRACT_ENV
        return
    parsed = parse_contract_env(CONTRACT_FILE.read_text(encoding="utf-8"))
    assert parsed == set(CONTRACT_ENV), (
        f"update CONTRACT_ENV: missing {sorted(parsed - CONTRACT_ENV)}, "
        f"stale {sorted(CONTRACT_ENV - parsed)}"
    )


def test_contract_metrics_copy_is_current() -> None:
    if not CONTRACT_FILE.is_file():
        assert {"http_requests_total", "jobs_total", "outbox_pending"} <= set(CONTRACT_METRICS)
        return
    parsed = parse_contract_metrics(CONTRACT_FILE.read_text(encoding="utf-8"))
    assert parsed == CONTRACT_METRICS, f"update CONTRACT_METRICS to {parsed}"


# ---------------------------------------------------------------------------------------------
# every file parses


def test_deploy_files_exist() -> None:
    assert DOCKERFILE.is_file()
    assert COMPOSE_FILE.is_file()
    assert (K8S_DIR / "README.md").is_file()
    names = {p.name for p in yaml_files()}
    assert {
        "docker-compose.yml",
        "namespace.yaml",
        "configmap.yaml",
        "secret.example.yaml",
        "api-deployment.yaml",
        "api-service.yaml",
        "migrate-job.yaml",
        "worker-deployment.yaml",
        "worker-scaledobject.yaml",
        "beat-deployment.yaml",
        "relay-deployment.yaml",
        "api-hpa.yaml",
        "pdb.yaml",
        "prometheus.yml",
    } <= names
    assert (DOCKER_DIR / "grafana" / "dashboards" / "llm-registry.json").is_file()


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_parses(path: Path) -> None:
    docs = [d for d in load_yaml_docs(path) if d is not None]
    assert docs, f"{path.name} holds no document"
    assert all(isinstance(d, dict) for d in docs), f"{path.name}: a document is not a mapping"


# ---------------------------------------------------------------------------------------------
# images are pinned


def test_dockerfile_base_images_are_pinned() -> None:
    images = dockerfile_from_images()
    assert images
    unpinned = [i for i in images if not image_is_pinned(i)]
    assert not unpinned, f"Dockerfile FROM without an exact tag: {unpinned}"


def test_dockerfile_python_is_patch_pinned() -> None:
    # python:3.11 moves with every 3.11.x release; the image's runtime is pinned to one.
    pythons = [
        i
        for i in dockerfile_from_images()
        if i.split(":")[0] in {"python", "docker.io/library/python"}
    ]
    assert pythons, "the image is built on the official python image"
    for image in pythons:
        assert re.match(r"^[^:]+:3\.11\.\d+-", image), f"{image} is not an exact 3.11.x tag"


def test_compose_images_are_pinned() -> None:
    services = compose()["services"]
    images = {name: svc["image"] for name, svc in services.items() if "image" in svc}
    assert set(images) == set(services), "every compose service names its image"
    unpinned = {n: i for n, i in images.items() if not image_is_pinned(i)}
    assert not unpinned, f"compose images without an exact tag: {unpinned}"


def test_k8s_images_are_pinned() -> None:
    images = {
        f"{owner}/{c['name']}": c.get("image", "")
        for owner, spec in pod_specs()
        for c in containers(spec)
    }
    assert images
    unpinned = {n: i for n, i in images.items() if not image_is_pinned(i)}
    assert not unpinned, f"k8s images without an exact tag: {unpinned}"


# ---------------------------------------------------------------------------------------------
# the registry is configured only through the contract's environment names


def test_dockerfile_env_names_are_known() -> None:
    allowed = contract_env()
    unknown = {
        n
        for n in dockerfile_env_names()
        if not (env_name_allowed(n, allowed) or n in IMAGE_RUNTIME_ENV)
    }
    assert not unknown, f"Dockerfile ENV outside CONTRACT.md §8: {sorted(unknown)}"


def test_compose_registry_env_names_are_known() -> None:
    doc = compose()
    allowed = contract_env()
    assert "x-registry-env" in doc, "compose keeps the registry's environment in x-registry-env"
    names = set(doc["x-registry-env"])
    services = app_services(doc)
    assert set(services) == set(COMPOSE_APP_SERVICES), f"registry services: {sorted(services)}"
    for svc in services.values():
        env = svc.get("environment", {})
        if isinstance(env, list):  # `- NAME=value` form
            env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
        names |= set(env)
        assert "env_file" not in svc, "an env_file would bypass this check"
    unknown = {n for n in names if not env_name_allowed(n, allowed)}
    assert not unknown, f"compose registry env outside CONTRACT.md §8: {sorted(unknown)}"
    assert {"DATABASE_URL", "JWT_SECRET", "BLOB_STORE_URL"} <= names


def test_compose_requires_a_jwt_secret() -> None:
    # Production refuses to start without one; compose must say so instead of inventing one.
    assert compose()["x-registry-env"]["JWT_SECRET"].startswith("${JWT_SECRET:?")


def test_k8s_env_names_are_known() -> None:
    allowed = contract_env()
    names: set[str] = set()
    for doc in k8s_of_kind("ConfigMap"):
        names |= set(doc.get("data", {}))
    secrets = k8s_of_kind("Secret")
    for doc in secrets:
        names |= set(doc.get("stringData", {})) | set(doc.get("data", {}))
    for _, spec in pod_specs():
        for c in containers(spec):
            names |= {e["name"] for e in c.get("env", [])}
    unknown = {n for n in names if not env_name_allowed(n, allowed)}
    assert not unknown, f"k8s env outside CONTRACT.md §8: {sorted(unknown)}"
    secret_keys = set().union(*(set(d.get("stringData", {})) for d in secrets))
    assert {"JWT_SECRET", "DATABASE_URL", "REGISTRY_ADMIN_PASSWORD"} <= secret_keys


def test_k8s_secret_is_a_template() -> None:
    text = (K8S_DIR / "secret.example.yaml").read_text(encoding="utf-8")
    assert "TEMPLATE" in text.upper()
    (secret,) = k8s_of_kind("Secret")
    values = secret["stringData"].values()
    assert all("CHANGE-ME" in v for v in values), "the template holds placeholders only"


def test_k8s_env_sources_exist() -> None:
    configmaps = {d["metadata"]["name"] for d in k8s_of_kind("ConfigMap")}
    secrets = {d["metadata"]["name"] for d in k8s_of_kind("Secret")}
    for owner, spec in pod_specs():
        for c in containers(spec):
            refs = c.get("envFrom", [])
            cm = {r["configMapRef"]["name"] for r in refs if "configMapRef" in r}
            sec = {r["secretRef"]["name"] for r in refs if "secretRef" in r}
            assert cm and cm <= configmaps, f"{owner}: envFrom ConfigMap {cm} not in k8s/"
            assert sec and sec <= secrets, f"{owner}: envFrom Secret {sec} not in k8s/"


# ---------------------------------------------------------------------------------------------
# health checks hit the health routes


def _probe_paths(container: dict[str, Any]) -> dict[str, str]:
    return {
        kind: container[kind]["httpGet"]["path"]
        for kind in ("livenessProbe", "readinessProbe", "startupProbe")
        if "httpGet" in container.get(kind, {})
    }


def test_k8s_api_probes_hit_health_routes() -> None:
    (api,) = [d for d in k8s_of_kind("Deployment") if d["metadata"]["name"].endswith("-api")]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    paths = _probe_paths(container)
    assert paths.get("livenessProbe") == LIVE_PATH
    assert paths.get("readinessProbe") == READY_PATH
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    for kind in ("livenessProbe", "readinessProbe"):
        port = container[kind]["httpGet"]["port"]
        assert ports.get(port, port) == 8080, f"{kind} probes port {port}, not 8080"


def test_k8s_probes_only_use_health_routes() -> None:
    for owner, spec in pod_specs():
        for c in containers(spec):
            for kind, path in _probe_paths(c).items():
                assert path in {LIVE_PATH, READY_PATH}, f"{owner} {kind} -> {path}"


def test_k8s_service_reaches_api_pods() -> None:
    (service,) = k8s_of_kind("Service")
    (api,) = [d for d in k8s_of_kind("Deployment") if d["metadata"]["name"].endswith("-api")]
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = api["spec"]["template"]["spec"]["containers"][0]["ports"]
    by_name = {p["name"]: p["containerPort"] for p in container_ports if "name" in p}
    for port in service["spec"]["ports"]:
        target = port["targetPort"]
        assert by_name.get(target, target) == 8080, f"Service targets {target}, not 8080"


def test_dockerfile_healthcheck_hits_live_route() -> None:
    final = dockerfile_final_stage()
    checks = [args for kw, args in final if kw == "HEALTHCHECK"]
    assert len(checks) == 1
    assert f"http://127.0.0.1:8080{LIVE_PATH}" in checks[0]


# ---------------------------------------------------------------------------------------------
# processes: subcommands, singletons, users


def test_dockerfile_runtime_contract() -> None:
    final = dockerfile_final_stage()
    # The last of each instruction wins, as in Docker.
    last = dict(final)
    assert exec_form(last["ENTRYPOINT"]) == ["llm-registry"]
    assert exec_form(last["CMD"]) == ["serve"]
    assert "8080" in last["EXPOSE"].split()
    user = last["USER"].split(":")[0]
    assert user in {"registry", str(REGISTRY_UID)}, f"runs as {user}"
    run_text = " ".join(args for kw, args in final if kw == "RUN")
    assert re.search(rf"useradd\b.*--uid {REGISTRY_UID}\b.*\bregistry\b", run_text)


def test_compose_commands_are_subcommands() -> None:
    services = app_services(compose())
    assert set(services) == set(COMPOSE_APP_SERVICES)
    for name, svc in services.items():
        command = svc.get("command")
        assert isinstance(command, list) and command, f"{name}: command in exec form"
        assert command[0] in SUBCOMMANDS, f"{name}: {command}"
        assert command[0] == COMPOSE_APP_SERVICES[name], f"{name} runs `{command[0]}`"


def _cli_options(subcommand: str) -> set[str]:
    return {
        opt
        for param in cli_main.commands[subcommand].params
        for opt in (*param.opts, *param.secondary_opts)
        if opt.startswith("-")
    }


def _process_args() -> list[tuple[str, list[str]]]:
    """(where, llm-registry arguments) of every registry process in compose and k8s."""
    found = [
        (f"compose {name}", list(svc["command"])) for name, svc in app_services(compose()).items()
    ]
    for owner, spec in pod_specs():
        found += [(f"k8s {owner}", list(c.get("args") or [])) for c in containers(spec)]
    return found


def test_process_flags_are_options_of_their_subcommand() -> None:
    # A flag the subcommand does not define makes click exit 2 and the pod crash-loop.
    processes = _process_args()
    assert any("--metrics-port" in args for _, args in processes)
    for where, args in processes:
        assert args and args[0] in SUBCOMMANDS, f"{where}: {args}"
        flags = {a.split("=", 1)[0] for a in args[1:] if a.startswith("-")}
        unknown = flags - _cli_options(args[0])
        assert not unknown, f"{where}: `llm-registry {args[0]}` has no {sorted(unknown)}"


def test_compose_depends_on_targets_exist() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", [])
        targets = set(deps) if isinstance(deps, (list, dict)) else set()
        missing = targets - set(services)
        assert not missing, f"{name} depends on unknown services {sorted(missing)}"


def test_compose_startup_order() -> None:
    services = compose()["services"]
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "worker", "beat", "relay"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
    for name in ("postgres", "redis", "nats", "minio"):
        assert "test" in services[name].get("healthcheck", {}), f"{name} has no healthcheck"
    assert "8080:8080" in [str(p) for p in services["api"].get("ports", [])]


def test_k8s_deployments_run_subcommands() -> None:
    deployments = k8s_of_kind("Deployment")
    seen = set()
    for d in deployments:
        for c in d["spec"]["template"]["spec"]["containers"]:
            args = c.get("args") or []
            assert args and args[0] in SUBCOMMANDS, f"{d['metadata']['name']}: args {args}"
            assert "command" not in c, "the image's ENTRYPOINT (llm-registry) must stay"
            seen.add(args[0])
    assert seen == {"serve", "worker", "beat", "relay"}
    (job,) = k8s_of_kind("Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


def test_k8s_beat_is_a_singleton() -> None:
    beats = [
        d
        for d in k8s_of_kind("Deployment")
        if d["spec"]["template"]["spec"]["containers"][0]["args"][0] == "beat"
    ]
    assert len(beats) == 1
    assert beats[0]["spec"]["replicas"] == 1
    assert beats[0]["spec"]["strategy"]["type"] == "Recreate"


def test_k8s_pods_run_unprivileged() -> None:
    for owner, spec in pod_specs():
        pod_sc = spec.get("securityContext", {})
        for c in containers(spec):
            sc = {**pod_sc, **c.get("securityContext", {})}
            assert sc.get("runAsNonRoot") is True, owner
            assert sc.get("runAsUser") == REGISTRY_UID, owner
            assert sc.get("readOnlyRootFilesystem") is True, owner
            assert sc.get("allowPrivilegeEscalation") is False, owner
            assert "resources" in c and c["resources"].get("limits"), f"{owner}: no limits"


# ---------------------------------------------------------------------------------------------
# Kubernetes schemas and docker compose's own parser


# API groups of custom resources the manifests use -> the kinds used from each.
CRD_KINDS = {"keda.sh": {"ScaledObject"}}


def _structural_errors(doc: dict[str, Any]) -> list[str]:
    errors = [f"missing {key}" for key in ("apiVersion", "kind") if not doc.get(key)]
    if not (doc.get("metadata") or {}).get("name"):
        errors.append("missing metadata.name")
    elif doc.get("kind") != "Namespace" and doc["metadata"].get("namespace") != NAMESPACE:
        errors.append(f"metadata.namespace is not {NAMESPACE}")
    return errors


@pytest.mark.parametrize(
    ("filename", "doc"),
    k8s_docs(),
    ids=[f"{f}:{d.get('kind')}/{(d.get('metadata') or {}).get('name')}" for f, d in k8s_docs()],
)
def test_k8s_manifest_is_valid(filename: str, doc: dict[str, Any]) -> None:
    assert not _structural_errors(doc), f"{filename}: {_structural_errors(doc)}"
    if doc["apiVersion"].split("/")[0] in CRD_KINDS:
        # Not a built-in kind, so not in kubernetes-validate's schemas: known kinds only here,
        # their structure is checked by hand (test_k8s_scaling.py).
        assert doc["kind"] in CRD_KINDS[doc["apiVersion"].split("/")[0]], f"{filename}: {doc}"
        return
    try:
        import kubernetes_validate
    except ImportError:
        return  # structural checks above are all there is without the schemas
    try:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{filename}: {exc.message} at {'/'.join(map(str, exc.path))}")


def _docker_compose_available() -> bool:
    if not shutil.which("docker"):
        return False
    probe = subprocess.run(
        ["docker", "compose", "version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return probe.returncode == 0


def test_compose_file_is_valid() -> None:
    doc = compose()
    assert doc["services"], "compose defines no service"
    for name, svc in doc["services"].items():
        assert "image" in svc or "build" in svc, f"{name} has neither image nor build"
    if not _docker_compose_available():
        return  # the Python checks in this module are the whole verdict
    env = {
        **os.environ,
        "JWT_SECRET": "test-only-secret",
        "REGISTRY_ADMIN_PASSWORD": "test-only-password",
    }
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
