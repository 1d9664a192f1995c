"""docker/ as one wired system: every name a compose file, the Prometheus config, Grafana's
provisioning and the dashboard use must point at something that exists: a compose service, a
port its container listens on, a mounted file, a metric the registry exports (CONTRACT.md §8).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deployfiles import (
    DASHBOARD_FILE,
    DOCKER_DIR,
    HISTOGRAMS,
    PROMETHEUS_FILE,
    TARGET_LABELS,
    compose,
    compose_volume_mounts,
    container_ports,
    dashboard,
    dashboard_panels,
    flag_value,
    host_port,
    is_bind_source,
    known_series,
    load_yaml_docs,
    prometheus_config,
    promql_parts,
)

REQUIRED_SERVICES = {
    "api",
    "worker",
    "beat",
    "relay",
    "postgres",
    "redis",
    "nats",
    "minio",
    "prometheus",
    "grafana",
    "jaeger",
    "flower",
}
# UIs without a login of their own (Grafana has one, but shares the reasoning).
LOCAL_ONLY_SERVICES = ("prometheus", "grafana", "jaeger", "flower")
API_METRICS_PORT = 8080
WORKER_METRICS_PORT = 9808
OTLP_HTTP_PORT = 4318


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path, for the bind mounts of a compose service."""
    return {
        target: (DOCKER_DIR / source).resolve()
        for target, source in compose_volume_mounts(service).items()
        if is_bind_source(source)
    }


def host_file_for(service: dict[str, Any], container_path: str) -> Path | None:
    """The host file behind `container_path`, through the service's bind mounts."""
    for target, source in sorted(bind_mounts(service).items(), key=lambda kv: -len(kv[0])):
        if container_path == target:
            return source
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target) :].lstrip("/")
    return None


def grafana_provisioning(kind: str) -> list[dict[str, Any]]:
    """The provisioning documents of `kind` (datasources, dashboards) Grafana really loads."""
    root = host_file_for(services()["grafana"], "/etc/grafana/provisioning")
    assert root is not None, "grafana mounts no /etc/grafana/provisioning"
    files = sorted((root / kind).glob("*.y*ml"))
    assert files, f"no {kind} provisioning file under {root / kind}"
    return [doc for f in files for doc in load_yaml_docs(f) if doc]


def all_targets() -> list[dict[str, Any]]:
    return [
        target
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


# ---------------------------------------------------------------------------------------------
# the helpers' own rules


@pytest.mark.parametrize(
    ("entry", "port"),
    [("8080:8080", 8080), ("127.0.0.1:9090:9090", 9090), ("5555/tcp", 5555), ("3000:80", 80)],
)
def test_container_port_rule(entry: str, port: int) -> None:
    assert container_ports({"ports": [entry]}) == {port}


@pytest.mark.parametrize(
    ("expr", "selectors", "grouping"),
    [
        (
            'sum(rate(http_requests_total{status=~"5.."}[5m])) by (path)',
            [("http_requests_total", {"status"})],
            {"path"},
        ),
        (
            "histogram_quantile(0.95, sum(rate(job_duration_seconds_bucket[5m])) by (le, step))",
            [("job_duration_seconds_bucket", set())],
            {"le", "step"},
        ),
        (
            'max by (kind) (delta(jobs_total{status="a,b"}[5m])) / on(kind) bogus_metric',
            [("jobs_total", {"status"}), ("bogus_metric", set())],
            {"kind"},
        ),
    ],
)
def test_promql_reading_rule(
    expr: str, selectors: list[tuple[str, set[str]]], grouping: set[str]
) -> None:
    assert promql_parts(expr) == (selectors, grouping)


# ---------------------------------------------------------------------------------------------
# services and their wiring


def test_compose_runs_the_whole_stack() -> None:
    missing = REQUIRED_SERVICES - set(services())
    assert not missing, f"compose lacks {sorted(missing)}"


def test_compose_named_volumes_are_declared() -> None:
    declared = set(compose().get("volumes") or {})
    for name, svc in services().items():
        for target, source in compose_volume_mounts(svc).items():
            if is_bind_source(source):
                assert (DOCKER_DIR / source).exists(), f"{name}: {source} -> {target} is missing"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"


def test_compose_observability_uis_listen_on_localhost_only() -> None:
    for name in LOCAL_ONLY_SERVICES:
        published = [str(p) for p in services()[name].get("ports", [])]
        assert published, f"{name} publishes no port"
        for entry in published:
            assert entry.startswith("127.0.0.1:"), f"{name} publishes {entry} on every interface"


def test_compose_registry_urls_name_services() -> None:
    env = compose()["x-registry-env"]
    urls = {k: v for k, v in env.items() if isinstance(v, str) and "://" in v}
    assert {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "NATS_URL"} <= set(urls)
    for key, url in urls.items():
        if url.startswith("s3://"):  # bucket/prefix, not a host
            continue
        host, _ = host_port(url)
        assert host in services(), f"{key}={url}: no compose service {host!r}"


def test_registry_traces_go_to_jaeger() -> None:
    endpoint = compose()["x-registry-env"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    host, port = host_port(endpoint)
    assert endpoint.startswith("http://"), "OTLP/HTTP, which the registry's exporter speaks"
    assert host == "jaeger"
    assert port == OTLP_HTTP_PORT
    assert port in container_ports(services()["jaeger"])
    for name in ("api", "worker", "beat", "relay"):
        assert "jaeger" in services()[name]["depends_on"], f"{name} starts before jaeger"


def test_flower_reads_the_registry_broker() -> None:
    flower = services()["flower"]
    command = flower["command"]
    assert isinstance(command, list), "command in exec form"
    broker = flag_value(command, "--broker")
    assert broker == compose()["x-registry-env"]["CELERY_BROKER_URL"]
    assert "flower" in command
    port = int(flag_value(command, "--port") or 5555)
    assert port in container_ports(flower)
    assert "redis" in flower.get("depends_on", {})


# ---------------------------------------------------------------------------------------------
# Prometheus


def _scrape_targets() -> list[tuple[str, str, str, int]]:
    """(job, metrics_path, compose host, port) of every static or DNS target."""
    found = []
    for job in prometheus_config()["scrape_configs"]:
        path = job.get("metrics_path", "/metrics")
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                found.append((job["job_name"], path, host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type", "SRV") == "A", "compose's DNS answers A records, not SRV"
            found += [(job["job_name"], path, name, int(dns["port"])) for name in dns["names"]]
    return found


def test_prometheus_config_is_the_mounted_file() -> None:
    prometheus = services()["prometheus"]
    config_path = flag_value(prometheus.get("command", []), "--config.file")
    assert config_path, "prometheus names its --config.file"
    assert host_file_for(prometheus, config_path) == PROMETHEUS_FILE.resolve()


def test_prometheus_targets_are_compose_services() -> None:
    targets = _scrape_targets()
    assert targets
    for job, _, host, port in targets:
        service = "prometheus" if host == "localhost" else host
        assert service in services(), f"{job}: no compose service {host!r}"
        listening = container_ports(services()[service])
        assert port in listening, f"{job}: {service} does not listen on {port} ({listening})"


def test_prometheus_scrapes_api_and_every_worker() -> None:
    by_host = {(host, port): path for _, path, host, port in _scrape_targets()}
    assert by_host.get(("api", API_METRICS_PORT)) == "/metrics"
    assert by_host.get(("worker", WORKER_METRICS_PORT)) == "/metrics"
    jobs = {j["job_name"]: j for j in prometheus_config()["scrape_configs"]}
    worker_jobs = [j for j in jobs.values() if "worker" in str(j.get("dns_sd_configs"))]
    # Static "worker:9808" would reach one replica of `--scale worker=N`; DNS reaches them all.
    assert worker_jobs, "workers are found by DNS, so every replica is scraped"


def test_processes_serve_metrics_where_prometheus_scrapes() -> None:
    api = services()["api"]["command"]
    assert int(flag_value(api, "--port") or 8080) == API_METRICS_PORT
    assert flag_value(services()["worker"]["command"], "--metrics-port") == str(WORKER_METRICS_PORT)


# ---------------------------------------------------------------------------------------------
# Grafana


def test_grafana_provisioning_files_are_mounted() -> None:
    grafana = services()["grafana"]
    for target, source in bind_mounts(grafana).items():
        assert source.exists(), f"grafana mounts missing {source} at {target}"
    assert grafana_provisioning("datasources")
    assert grafana_provisioning("dashboards")


def test_grafana_dashboard_provider_loads_the_dashboard() -> None:
    grafana = services()["grafana"]
    providers = [p for doc in grafana_provisioning("dashboards") for p in doc["providers"]]
    assert providers
    loaded: set[Path] = set()
    for provider in providers:
        assert provider["type"] == "file"
        folder = host_file_for(grafana, provider["options"]["path"])
        assert folder is not None and folder.is_dir(), f"{provider['options']['path']} unmounted"
        loaded |= {p.resolve() for p in folder.glob("*.json")}
    assert DASHBOARD_FILE.resolve() in loaded
    home = grafana.get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert host_file_for(grafana, home) == DASHBOARD_FILE.resolve()


def test_grafana_datasources_reach_services() -> None:
    datasources = [d for doc in grafana_provisioning("datasources") for d in doc["datasources"]]
    types = {d["type"] for d in datasources}
    assert "prometheus" in types
    assert sum(bool(d.get("isDefault")) for d in datasources) == 1
    for ds in datasources:
        host, port = host_port(ds["url"])
        assert host in services(), f"datasource {ds['name']}: no compose service {host!r}"
        assert port in container_ports(services()[host]), f"{ds['name']}: {host} not on {port}"


# ---------------------------------------------------------------------------------------------
# the dashboard


def test_dashboard_parses_and_is_identified() -> None:
    doc = dashboard()  # json.loads: fails here on a syntax error
    assert doc["uid"] and doc["title"]
    assert dashboard_panels()
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"


def test_dashboard_panels_use_the_provisioned_prometheus() -> None:
    uids = {
        d["uid"]
        for doc in grafana_provisioning("datasources")
        for d in doc["datasources"]
        if d["type"] == "prometheus"
    }
    for panel in dashboard_panels():
        refs = [panel.get("datasource")] + [t.get("datasource") for t in panel["targets"]]
        for ref in refs:
            assert ref and ref["uid"] in uids, f"{panel['title']}: datasource {ref}"


def test_dashboard_queries_name_only_exported_metrics_and_labels() -> None:
    series = known_series()
    targets = all_targets()
    assert targets
    for target in targets:
        expr = target["expr"]
        selectors, grouping = promql_parts(expr)
        assert selectors, f"no metric in {expr}"
        labels_here = set(TARGET_LABELS)
        for name, matched in selectors:
            assert name in series, f"{name} is not a metric the registry exports: {expr}"
            assert matched <= series[name], f"{name} has no label {matched - series[name]}"
            labels_here |= series[name]
        assert grouping <= labels_here, f"groups by unknown {grouping - labels_here}: {expr}"
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        assert legend <= grouping | labels_here, f"legend names {legend - grouping}: {expr}"


def test_dashboard_shows_what_operations_asked_for() -> None:
    exprs = [" ".join(t["expr"].split()) for t in all_targets()]
    used = {name for e in exprs for name, _ in promql_parts(e)[0]}

    def has(pattern: str) -> bool:
        return any(re.search(pattern, e) for e in exprs)

    # request rate by route, latency percentiles, error rate
    assert has(r"rate\(http_requests_total\[5m\]\)\) by \(path\)")
    for q in ("0.5", "0.95", "0.99"):
        assert has(rf"histogram_quantile\({q}, .*http_request_duration_seconds_bucket")
    assert has(r'http_requests_total\{status=~"5\.\."\}.*/ .*http_requests_total')
    # jobs: throughput from the gauge-like count (delta/deriv/increase), p95 step durations
    assert has(r"(delta|deriv|increase)\(jobs_total")
    assert has(r"histogram_quantile\(0\.95, .*job_duration_seconds_bucket.*by \(le, step\)")
    # queues, outbox, cache hit rate
    assert {"celery_queue_length", "outbox_pending"} <= used
    assert has(
        r'cache_operations_total\{result="hit"\}.*/ .*cache_operations_total\{operation="get"\}'
    )
    # Histograms are read through their buckets, never as a bare name.
    assert not used & HISTOGRAMS


def test_dashboard_does_not_sum_database_counts_over_replicas() -> None:
    # jobs_total, assets_total, outbox_pending and celery_queue_length are read from the
    # database or broker at scrape time: every API replica reports the same value, so a sum()
    # over them multiplies the truth by the replica count.
    replicated = {"jobs_total", "assets_total", "outbox_pending", "celery_queue_length"}
    for target in all_targets():
        expr = target["expr"]
        names = {name for name, _ in promql_parts(expr)[0]}
        if names & replicated:
            assert not re.search(r"\bsum\b", expr), f"sum() over replicated counts: {expr}"


def test_provisioning_yaml_is_grafana_v1() -> None:
    for kind in ("datasources", "dashboards"):
        for doc in grafana_provisioning(kind):
            assert doc.get("apiVersion") == 1, f"{kind}: {yaml.safe_dump(doc)[:80]}"
