"""k8s/ scaling and availability: one worker Deployment per Celery queue, each scaled by a KEDA
ScaledObject on its queue's Redis list, the API by a CPU HorizontalPodAutoscaler, every
PodDisruptionBudget guarding real pods without blocking a drain, and Prometheus annotations
that point at the ports the processes serve metrics on.

KEDA's ScaledObject is a CRD that kubernetes-validate has no schema for; its structure is
checked here by hand.
"""

from __future__ import annotations

from typing import Any

from app.jobs.queue import QUEUES
from tests.deploy.deployfiles import (
    NAMESPACE,
    deployments,
    flag_value,
    host_port,
    k8s_of_kind,
    main_container,
    selector_matches,
)

WORKER_METRICS_PORT = 9808
KEDA_API_VERSION = "keda.sh/v1alpha1"


def worker_deployments() -> dict[str, dict[str, Any]]:
    return {n: d for n, d in deployments().items() if main_container(d)["args"][0] == "worker"}


def queues_of(deployment: dict[str, Any]) -> list[str]:
    value = flag_value(main_container(deployment)["args"], "--queues")
    assert value, f"{deployment['metadata']['name']} names its queues (the default is all three)"
    return value.split(",")


def scaled_objects() -> list[dict[str, Any]]:
    return k8s_of_kind("ScaledObject")


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def broker_url() -> str:
    (configmap,) = k8s_of_kind("ConfigMap")
    return configmap["data"]["CELERY_BROKER_URL"]


def min_replicas(name: str) -> int:
    """The fewest pods a Deployment runs: its autoscaler's floor, else its replicas (1 when
    unset)."""
    for hpa in k8s_of_kind("HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == name:
            return int(hpa["spec"].get("minReplicas", 1))
    for so in scaled_objects():
        if so["spec"]["scaleTargetRef"]["name"] == name:
            return int(so["spec"].get("minReplicaCount", 0))
    return int(deployments()[name]["spec"].get("replicas", 1))


# ---------------------------------------------------------------------------------------------
# workers: one Deployment per queue


def test_worker_deployments_cover_each_queue_once() -> None:
    consumed = [q for d in worker_deployments().values() for q in queues_of(d)]
    assert sorted(consumed) == sorted(QUEUES), f"workers consume {consumed}, queues {QUEUES}"
    for name, d in worker_deployments().items():
        assert len(queues_of(d)) == 1, f"{name} consumes {queues_of(d)}; one queue each"


def test_deployment_selectors_do_not_overlap() -> None:
    # Overlapping selectors make two Deployments fight over the same pods.
    all_deployments = deployments()
    for name, d in all_deployments.items():
        assert selector_matches(d["spec"]["selector"], pod_labels(d)), f"{name} selects itself"
        for other, o in all_deployments.items():
            if other != name:
                assert not selector_matches(d["spec"]["selector"], pod_labels(o)), (
                    f"{name}'s selector also matches {other}'s pods"
                )


def test_workers_serve_metrics_on_their_port() -> None:
    for name, d in worker_deployments().items():
        container = main_container(d)
        assert flag_value(container["args"], "--metrics-port") == str(WORKER_METRICS_PORT), name
        ports = {p["containerPort"] for p in container.get("ports", [])}
        assert WORKER_METRICS_PORT in ports, f"{name} does not declare port {WORKER_METRICS_PORT}"


def test_prometheus_annotations_point_at_served_metrics() -> None:
    scraped = set()
    for name, d in deployments().items():
        annotations = d["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        scraped.add(name)
        container = main_container(d)
        port = int(annotations["prometheus.io/port"])
        assert port in {p["containerPort"] for p in container.get("ports", [])}, name
        assert annotations.get("prometheus.io/path") == "/metrics", name
        args = container["args"]
        # `serve` answers /metrics on its HTTP port; a worker on --metrics-port.
        metrics_port = flag_value(args, "--metrics-port") if args[0] == "worker" else "8080"
        serves = int(metrics_port or 0)
        assert port == serves, f"{name} serves metrics on {serves}, annotation says {port}"
    wanted = {n for n, d in deployments().items() if main_container(d)["args"][0] == "serve"}
    wanted |= set(worker_deployments())
    assert wanted <= scraped, f"not scraped: {sorted(wanted - scraped)}"


# ---------------------------------------------------------------------------------------------
# KEDA ScaledObjects (by hand: a CRD)


def test_each_worker_deployment_has_one_scaled_object() -> None:
    targets = [so["spec"]["scaleTargetRef"]["name"] for so in scaled_objects()]
    assert sorted(targets) == sorted(worker_deployments()), targets


def test_scaled_objects_are_well_formed() -> None:
    objects = scaled_objects()
    assert objects
    for so in objects:
        name = so["metadata"]["name"]
        assert so["apiVersion"] == KEDA_API_VERSION, name
        assert so["metadata"]["namespace"] == NAMESPACE, name
        spec = so["spec"]
        assert set(spec) <= {
            "scaleTargetRef",
            "minReplicaCount",
            "maxReplicaCount",
            "idleReplicaCount",
            "pollingInterval",
            "cooldownPeriod",
            "initialCooldownPeriod",
            "fallback",
            "advanced",
            "triggers",
        }, f"{name}: unknown spec keys"
        ref = spec["scaleTargetRef"]
        assert ref.get("kind", "Deployment") == "Deployment", name
        assert ref.get("apiVersion", "apps/v1") == "apps/v1", name
        assert ref["name"] in deployments(), f"{name} scales missing {ref['name']}"
        low, high = int(spec.get("minReplicaCount", 0)), int(spec.get("maxReplicaCount", 100))
        assert 0 <= low <= high, f"{name}: {low}..{high}"
        for key in ("pollingInterval", "cooldownPeriod"):
            assert isinstance(spec.get(key, 1), int) and spec.get(key, 1) > 0, f"{name}.{key}"


def test_scaled_objects_watch_their_deployments_queue() -> None:
    broker_host, broker_port = host_port(broker_url())
    broker_db = broker_url().rsplit("/", 1)[-1] or "0"
    for so in scaled_objects():
        name = so["metadata"]["name"]
        target = deployments()[so["spec"]["scaleTargetRef"]["name"]]
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "redis", name
        meta = trigger["metadata"]
        # KEDA's metadata values are strings; a YAML number here is rejected by the CRD.
        assert all(isinstance(v, str) for v in meta.values()), f"{name}: {meta}"
        assert [meta["listName"]] == queues_of(target), f"{name} watches the wrong list"
        assert meta["address"] == f"{broker_host}:{broker_port or 6379}", name
        assert meta.get("databaseIndex", "0") == broker_db, f"{name}: not the broker's db"
        assert int(meta["listLength"]) > 0, name


def test_autoscaled_deployments_leave_replicas_to_the_autoscaler() -> None:
    # A `replicas` in the manifest resets the autoscaler's choice on every `kubectl apply`.
    autoscaled = {so["spec"]["scaleTargetRef"]["name"] for so in scaled_objects()}
    hpa_targets = {
        h["spec"]["scaleTargetRef"]["name"] for h in k8s_of_kind("HorizontalPodAutoscaler")
    }
    assert not autoscaled & hpa_targets, "KEDA makes its own HPA; two would fight"
    for name in autoscaled | hpa_targets:
        assert "replicas" not in deployments()[name]["spec"], f"{name} sets replicas"


# ---------------------------------------------------------------------------------------------
# the API's HorizontalPodAutoscaler


def test_api_hpa_scales_the_api_on_cpu() -> None:
    (hpa,) = k8s_of_kind("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment")
    target = deployments().get(ref["name"])
    assert target is not None, f"HPA targets missing Deployment {ref['name']}"
    assert main_container(target)["args"][0] == "serve"
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    cpu = [
        m["resource"]
        for m in hpa["spec"]["metrics"]
        if m["type"] == "Resource" and m["resource"]["name"] == "cpu"
    ]
    assert cpu and cpu[0]["target"]["type"] == "Utilization"
    # Utilization is a share of the request: without one the HPA cannot compute it.
    for c in target["spec"]["template"]["spec"]["containers"]:
        assert c["resources"]["requests"].get("cpu"), f"{c['name']} requests no CPU"


# ---------------------------------------------------------------------------------------------
# PodDisruptionBudgets


def test_each_pdb_guards_exactly_one_deployment() -> None:
    pdbs = k8s_of_kind("PodDisruptionBudget")
    assert pdbs
    for pdb in pdbs:
        matched = [
            n
            for n, d in deployments().items()
            if selector_matches(pdb["spec"]["selector"], pod_labels(d))
        ]
        assert len(matched) == 1, f"PDB {pdb['metadata']['name']} matches {matched}"


def test_pdbs_cover_api_workers_and_relay() -> None:
    guarded = {
        n
        for pdb in k8s_of_kind("PodDisruptionBudget")
        for n, d in deployments().items()
        if selector_matches(pdb["spec"]["selector"], pod_labels(d))
    }
    wanted = {
        n for n, d in deployments().items() if main_container(d)["args"][0] in {"serve", "relay"}
    } | set(worker_deployments())
    assert wanted <= guarded, f"no PDB for {sorted(wanted - guarded)}"


def test_pdbs_never_block_a_drain() -> None:
    # A budget that allows no eviction at the Deployment's floor stalls every node drain.
    for pdb in k8s_of_kind("PodDisruptionBudget"):
        spec = pdb["spec"]
        assert ("minAvailable" in spec) != ("maxUnavailable" in spec), pdb["metadata"]["name"]
        for name, d in deployments().items():
            if not selector_matches(spec["selector"], pod_labels(d)):
                continue
            floor = min_replicas(name)
            if "minAvailable" in spec:
                assert isinstance(spec["minAvailable"], int), "absolute, so the check is exact"
                assert spec["minAvailable"] < max(floor, 1), f"{name}: floor {floor}"
            else:
                assert spec["maxUnavailable"] not in (0, "0%"), f"{name} can never be evicted"
