"""The deploy files (docker/, k8s/) loaded for the tests in this folder, and the rules they are
held to: the contract's environment names and metrics, image pinning, small PromQL reading.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from app.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "docker"
K8S_DIR = REPO / "k8s"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
COMPOSE_FILE = DOCKER_DIR / "docker-compose.yml"
PROMETHEUS_FILE = DOCKER_DIR / "prometheus" / "prometheus.yml"
DASHBOARD_FILE = DOCKER_DIR / "grafana" / "dashboards" / "llm-registry.json"
CONTRACT_FILE = Path(__file__).resolve().parents[2].parent / "shared" / "CONTRACT.md"

REGISTRY_IMAGE = "ghcr.io/llm-registry/llm-registry"
REGISTRY_UID = 10001
# What the console script really has: a manifest may only run one of these.
SUBCOMMANDS = set(cli_main.commands)
# compose service -> the `llm-registry` subcommand it runs
COMPOSE_APP_SERVICES = {
    "migrate": "migrate",
    "api": "serve",
    "worker": "worker",
    "beat": "beat",
    "relay": "relay",
}
NAMESPACE = "llm-registry"
LIVE_PATH = "/health/live"
READY_PATH = "/health/ready"

# Copy of the environment names of CONTRACT.md §8 ("Configuration" bullet), used when the
# contract is not beside the repository. test_contract_env_copy_is_current keeps it in sync.
CONTRACT_ENV = frozenset(
    {
        "REGISTRY_CONFIG",
        "REGISTRY_ENV",
        "JWT_SECRET",
        "SERVER_HOST",
        "SERVER_PORT",
        "DATABASE_URL",
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "NATS_URL",
        "BLOB_STORE_URL",
        "S3_ENDPOINT_URL",
        "JWT_ISSUER",
        "JWT_AUDIENCE",
        "JWT_EXPIRATION_SECONDS",
        "RATE_LIMIT_ENABLED",
        "RATE_LIMIT_MAX_REQUESTS",
        "RATE_LIMIT_WINDOW_SECS",
        "TRUSTED_PROXIES",
        "REQUIRE_REQUEST_SIGNING",
        "LOG_LEVEL",
        "CORS_ALLOWED_ORIGINS",
        "MAX_BLOB_BYTES",
        "COMPLIANCE_SCAN_INTERVAL_SECONDS",
        "TEST_HTTP_ALLOWED_HOSTS",
        "REGISTRY_ADMIN_USERNAME",
        "REGISTRY_ADMIN_PASSWORD",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    }
)
# Copy of the metric names (with their labels) of CONTRACT.md §8 ("GET /metrics" bullet), used
# when the contract is not beside the repository; test_contract_metrics_copy_is_current keeps it
# in sync.
CONTRACT_METRICS: dict[str, frozenset[str]] = {
    "http_requests_total": frozenset({"method", "path", "status"}),
    "http_request_duration_seconds": frozenset({"method", "path"}),
    "db_queries_total": frozenset(),
    "cache_operations_total": frozenset({"operation", "result"}),
    "assets_total": frozenset({"asset_type", "status"}),
    "jobs_total": frozenset({"kind", "status"}),
    "job_duration_seconds": frozenset(),
    "events_published_total": frozenset(),
    "outbox_pending": frozenset(),
}
# Series beyond the contract's list that the app exports: the worker histogram's labels (the
# contract names the metric only) and the broker's queue lengths, exported by the API.
EXTRA_METRIC_LABELS: dict[str, frozenset[str]] = {
    "job_duration_seconds": frozenset({"kind", "step"}),
    "celery_queue_length": frozenset({"queue"}),
}
HISTOGRAMS = frozenset({"http_request_duration_seconds", "job_duration_seconds"})
# Labels Prometheus itself attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})

# Standard families the contract defers to ("standard AWS credential env vars", OpenTelemetry).
STANDARD_ENV_PREFIXES = ("AWS_", "OTEL_")
# Process-level names an image may set that are not registry settings at all.
IMAGE_RUNTIME_ENV = frozenset({"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"})

# An exact version: at least major.minor, optionally a variant suffix (2.10.24-alpine), or
# MinIO's RELEASE.<timestamp> scheme.
_PINNED_TAG = re.compile(
    r"^v?\d+\.\d+(\.\d+)*([-_.+][A-Za-z0-9._-]+)?$"
    r"|^RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z$"
)


# ---------------------------------------------------------------------------------------------
# helpers


def parse_contract_env(text: str) -> set[str]:
    """Environment names in the "Configuration" bullet of §8 Operations."""
    section = re.search(r"^## 8\..*?(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert section, "CONTRACT.md has no '## 8.' section"
    bullet = re.search(
        r"^- Configuration:.*?(?=^- |\Z)", section.group(0), re.MULTILINE | re.DOTALL
    )
    assert bullet, "CONTRACT.md §8 has no '- Configuration:' bullet"
    return set(re.findall(r"`([A-Z][A-Z0-9_]*)`", bullet.group(0)))


def contract_env() -> frozenset[str]:
    if CONTRACT_FILE.is_file():
        return frozenset(parse_contract_env(CONTRACT_FILE.read_text(encoding="utf-8")))
    return CONTRACT_ENV


def env_name_allowed(name: str, allowed: frozenset[str]) -> bool:
    return name in allowed or name.startswith(STANDARD_ENV_PREFIXES)


def image_is_pinned(ref: str) -> bool:
    """True for `name:<exact version>` (optionally `@sha256:…`), never `latest` or a bare major."""
    if "$" in ref:  # an interpolated tag is whatever the shell says it is
        return False
    name = ref.partition("@")[0]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.split(":", 1)[1]
    return "latest" not in tag.lower() and bool(_PINNED_TAG.match(tag))


def yaml_files() -> list[Path]:
    return sorted(
        p for d in (DOCKER_DIR, K8S_DIR) for p in d.rglob("*") if p.suffix in {".yml", ".yaml"}
    )


def load_yaml_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return list(yaml.safe_load_all(fh))


def compose() -> dict[str, Any]:
    (doc,) = load_yaml_docs(COMPOSE_FILE)
    return doc


def app_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services running the registry's own image."""
    return {
        name: svc
        for name, svc in doc["services"].items()
        if "build" in svc or str(svc.get("image", "")).startswith(REGISTRY_IMAGE + ":")
    }


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.y*ml")):
        for doc in load_yaml_docs(path):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def k8s_of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_docs() if doc.get("kind") == kind]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in k8s_docs():
        if doc.get("kind") in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec["containers"])


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def dockerfile_from_images() -> list[str]:
    images, stages = [], set()
    for keyword, args in dockerfile_instructions():
        if keyword != "FROM":
            continue
        tokens = [t for t in args.split() if not t.startswith("--")]
        if tokens[0] not in stages:  # `FROM builder` reuses a stage, not an image
            images.append(tokens[0])
        if len(tokens) >= 3 and tokens[1].upper() == "AS":
            stages.add(tokens[2])
    return images


def dockerfile_final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    return instructions[last_from:]


def dockerfile_env_names() -> set[str]:
    names = set()
    for keyword, args in dockerfile_instructions():
        if keyword != "ENV":
            continue
        tokens = shlex.split(args)
        if tokens and "=" not in tokens[0]:  # legacy `ENV NAME value`
            names.add(tokens[0])
        else:
            names.update(t.split("=", 1)[0] for t in tokens)
    return names


def exec_form(args: str) -> list[str]:
    value = yaml.safe_load(args)  # a JSON array is valid YAML
    assert isinstance(value, list), f"not in exec (JSON array) form: {args}"
    return value


def parse_contract_metrics(text: str) -> dict[str, frozenset[str]]:
    """Metric names and their labels in the "GET /metrics" bullet of §8: the backticked
    `name` or `name{label,...}` items listed before the sentence about `path`."""
    section = re.search(r"^## 8\..*?(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert section, "CONTRACT.md has no '## 8.' section"
    bullet = re.search(
        r"^- `GET /metrics`.*?(?=^- |\Z)", section.group(0), re.MULTILINE | re.DOTALL
    )
    assert bullet, "CONTRACT.md §8 has no '- `GET /metrics`' bullet"
    listing = bullet.group(0).split("includes at least", 1)[-1].split("`path` is", 1)[0]
    return {
        name: frozenset(filter(None, (label.strip() for label in labels.split(","))))
        for name, labels in re.findall(r"`([a-z_][a-z0-9_]*)(?:\{([^}`]*)\})?`", listing)
    }


def contract_metrics() -> dict[str, frozenset[str]]:
    if CONTRACT_FILE.is_file():
        return parse_contract_metrics(CONTRACT_FILE.read_text(encoding="utf-8"))
    return CONTRACT_METRICS


def known_series() -> dict[str, frozenset[str]]:
    """Every series name a dashboard may query, with the labels it carries: the contract's
    metrics, the extras, and a histogram's _bucket (plus `le`), _sum and _count."""
    labels = dict(contract_metrics())
    for name, extra in EXTRA_METRIC_LABELS.items():
        labels[name] = labels.get(name, frozenset()) | extra
    series = {}
    for name, names in labels.items():
        names |= TARGET_LABELS
        if name in HISTOGRAMS:
            series[f"{name}_bucket"] = names | {"le"}
            series[f"{name}_sum"] = names
            series[f"{name}_count"] = names
        else:
            series[name] = names
    return series


# PromQL words that are neither functions (always followed by "(") nor metric names.
_PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
    | {"unless", "offset", "inf", "nan"}
)
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")


def promql_parts(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """(selectors as (metric, labels matched), labels named in by/without/on/ignoring) of a
    PromQL expression. Not a parser: enough for dashboard queries, whose shape the tests fix."""
    assert expr.count("(") == expr.count(")"), f"unbalanced parentheses: {expr}"
    assert expr.count("{") == expr.count("}"), f"unbalanced braces: {expr}"
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values never name anything
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    grouping = {
        label.strip() for group in _GROUPING.findall(text) for label in group.split(",") if label
    }
    text = _GROUPING.sub(" ", text)
    selectors = []
    for name, matchers, call in _SELECTOR.findall(text):
        if call or name in _PROMQL_KEYWORDS:
            continue  # a function or aggregation, or an operator word
        selectors.append((name, set(_MATCHER.findall(matchers))))
    return selectors, grouping


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included, rows themselves excluded."""
    panels = []
    for panel in dashboard()["panels"]:
        panels.extend(panel.get("panels", []) if panel.get("type") == "row" else [panel])
    return panels


def prometheus_config() -> dict[str, Any]:
    (doc,) = load_yaml_docs(PROMETHEUS_FILE)
    return doc


def container_ports(service: dict[str, Any]) -> set[int]:
    """The ports a compose service's container listens on, as declared by `expose` and the
    container side of `ports` ("127.0.0.1:9090:9090", "8080:8080/tcp", "5555")."""
    ports = {int(str(p).split("/")[0]) for p in service.get("expose", [])}
    for entry in service.get("ports", []):
        if isinstance(entry, dict):  # long syntax
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def flag_value(args: list[str], flag: str) -> str | None:
    """The value of `--flag value` or `--flag=value` in an argument list."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def compose_volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """target path -> source (a path relative to docker/ for bind mounts, else a volume name)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts[volume["target"]] = volume["source"]
        else:
            source, target = str(volume).split(":")[:2]
            mounts[target] = source
    return mounts


def is_bind_source(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def host_port(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port


def deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in k8s_of_kind("Deployment")}


def main_container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a pod's labels."""
    if not selector:
        return False  # an absent selector matches nothing here; {} would match everything
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], set(expr.get("values", []))
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True
