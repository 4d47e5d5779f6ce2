"""The deployment files, checked against the code they deploy.

- The Grafana dashboard queries only metrics `GatewayMetrics` / `WorkerMetrics` expose, with
  the labels they carry.
- The Kubernetes manifests run the real CLI: each container's argv (the image's ENTRYPOINT
  plus `args`) and environment go through `build_parser` and `config_from_args`, and the
  resulting settings are checked against probes, ports, Services, the preStop drain, the
  grace period, the worker list, the session store and the worker token.
- The Dockerfile: base image, user, entrypoint, healthcheck, pinned install.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from trio_gateway.cli import build_parser
from trio_gateway.config import (
    ENV_PREFIX,
    WORKER_ENV_PREFIX,
    GatewayConfig,
    WorkerConfig,
    config_from_args,
)
from trio_gateway.metrics import GatewayMetrics
from trio_gateway.worker.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "trio-gateway.json"
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

GATEWAY = "trio-gateway"
WORKER = "trio-gateway-worker"
REDIS = "trio-gateway-redis"

# ---------------------------------------------------------------------------------------
# The dashboard
# ---------------------------------------------------------------------------------------

# Labels Prometheus adds to every scraped series.
SCRAPE_LABELS = frozenset({"instance", "job"})

# What the dashboard must chart (the issue's list), as metric families.
REQUIRED_FAMILIES = (
    "trio_gateway_requests",
    "trio_gateway_inflight_requests",
    "trio_gateway_queued_requests",
    "trio_gateway_time_to_first_token_seconds",
    "trio_gateway_inter_token_latency_seconds",
    "trio_gateway_output_tokens",
    "trio_gateway_disconnected_clients",
    "trio_gateway_cancellations",
    "trio_gateway_backend_up",
    "trio_gateway_backend_requests",
    "trio_gateway_backend_time_to_first_token_seconds",
    "trio_gateway_backend_inter_token_latency_seconds",
    "trio_gateway_backend_inflight_requests",
    "trio_gateway_worker_active_requests",
    "trio_gateway_sessions_active",
    "trio_gateway_sessions_opened",
    "trio_gateway_sessions_closed",
    "trio_gateway_session_store_errors",
    "trio_gateway_event_loop_lag_seconds",
    "trio_gateway_live_tasks",
    "trio_gateway_shutdown_phase",
)

SELECTOR = re.compile(r"\b(trio_gateway_[a-z_]+)\b(?:\s*\{([^}]*)\})?")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')
GROUPING = re.compile(r"\b(by|without)\s*\(([^)]*)\)")
LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
LABEL_VALUES = re.compile(r"label_values\(\s*(trio_gateway_[a-z_]+)[^,]*,\s*([A-Za-z_]\w*)\s*\)")


@cache
def exposed_samples() -> dict[str, tuple[str, frozenset[str]]]:
    """Every sample name the gateway and worker registries can expose: its family and labels.

    Names and types come from `registry.collect()`; label names from the collectors
    themselves (a labelled metric has no samples, hence no labels, before its first use).
    """
    samples: dict[str, tuple[str, frozenset[str]]] = {}
    for metrics in (GatewayMetrics(), WorkerMetrics()):
        labels = {
            wrapper._name: frozenset(wrapper._labelnames)
            for wrapper in vars(metrics).values()
            if isinstance(wrapper, MetricWrapperBase)
        }
        for family in metrics.registry.collect():
            assert family.name in labels, f"{family.name}: not an attribute of {metrics}"
            names = labels[family.name]
            if family.type == "counter":
                samples[family.name + "_total"] = (family.name, names)
            elif family.type == "gauge":
                samples[family.name] = (family.name, names)
            elif family.type == "histogram":
                samples[family.name + "_bucket"] = (family.name, names | {"le"})
                samples[family.name + "_count"] = (family.name, names)
                samples[family.name + "_sum"] = (family.name, names)
            else:
                raise AssertionError(f"{family.name}: unexpected metric type {family.type}")
    return samples


def load_dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # a collapsed row's panels


def expr_problems(where: str, expr: str, legend: str) -> list[str]:
    samples = exposed_samples()
    problems: list[str] = []
    used = SELECTOR.findall(expr)
    if not used:
        return [f"{where}: queries no trio_gateway_* metric: {expr!r}"]
    metric_labels: list[tuple[str, frozenset[str]]] = []
    for metric, matchers in used:
        if metric not in samples:
            problems.append(f"{where}: {metric} is not exposed by the gateway or the worker")
            continue
        known = samples[metric][1] | SCRAPE_LABELS
        metric_labels.append((metric, known))
        for label in MATCHER.findall(matchers):
            if label not in known:
                problems.append(f"{where}: {metric} has no label {label!r}")
    grouped: set[str] = set()
    by_clause = False
    for keyword, group in GROUPING.findall(expr):
        for label in (part.strip() for part in group.split(",")):
            if not label:
                continue
            for metric, known in metric_labels:
                if label not in known:
                    problems.append(f"{where}: {keyword} ({label}) but {metric} has no {label!r}")
            if keyword == "by":
                grouped.add(label)
                by_clause = True
    legend_labels = LEGEND_LABEL.findall(legend)
    for label in legend_labels:
        available = grouped if by_clause else set().union(*(k for _, k in metric_labels))
        if label not in available:
            problems.append(f"{where}: legend {{{{{label}}}}} is not a label of the result")
    return problems


def dashboard_problems(dashboard: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    variables = dashboard.get("templating", {}).get("list", [])
    if not any(v.get("type") == "datasource" and v.get("query") == "prometheus" for v in variables):
        problems.append("no Prometheus datasource template variable")
    datasource_names = {v["name"] for v in variables if v.get("type") == "datasource"}
    for variable in variables:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        for metric, label in LABEL_VALUES.findall(text):
            where = f"variable {variable.get('name')!r}"
            if metric not in exposed_samples():
                problems.append(f"{where}: {metric} is not exposed by the gateway or the worker")
            elif label not in exposed_samples()[metric][1] | SCRAPE_LABELS:
                problems.append(f"{where}: {metric} has no label {label!r}")
    ids = [panel.get("id") for panel in panels(dashboard)]
    if len(ids) != len(set(ids)):
        problems.append(f"panel ids are not unique: {ids}")
    for panel in panels(dashboard):
        if panel.get("type") == "row":
            continue
        title = panel.get("title", "")
        where = f"panel {title!r}"
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"{where}: no targets")
        for source in [panel.get("datasource")] + [t.get("datasource") for t in targets]:
            uid = (source or {}).get("uid", "")
            if uid.strip("${}") not in datasource_names:
                problems.append(f"{where}: datasource {source!r} is not the template variable")
        for target in targets:
            problems += expr_problems(
                f"{where} ({target.get('refId')})",
                target.get("expr", ""),
                target.get("legendFormat", ""),
            )
    return problems


def families_used(dashboard: dict[str, Any]) -> set[str]:
    samples = exposed_samples()
    return {
        samples[metric][0]
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        for metric, _ in SELECTOR.findall(target.get("expr", ""))
        if metric in samples
    }


def test_dashboard_queries_only_exposed_metrics_and_labels() -> None:
    assert dashboard_problems(load_dashboard()) == []


def test_dashboard_charts_every_required_metric() -> None:
    missing = set(REQUIRED_FAMILIES) - families_used(load_dashboard())
    assert not missing, f"no panel charts {sorted(missing)}"


def test_dashboard_is_a_current_grafana_dashboard() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"]
    for panel in panels(dashboard):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]


def _first_target(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    panel = next(p for p in panels(dashboard) if p.get("title") == title)
    target: dict[str, Any] = panel["targets"][0]
    return target


@pytest.mark.parametrize(
    ("title", "change", "expected"),
    [
        (
            "Request rate by status",
            {"expr": "sum by (status) (rate(trio_gateway_request_total[5m]))"},
            "trio_gateway_request_total is not exposed",
        ),
        (
            "Backend up",
            {"expr": "min by (worker) (trio_gateway_backend_up)", "legendFormat": "{{worker}}"},
            "by (worker) but trio_gateway_backend_up has no 'worker'",
        ),
        (
            "Cancellations by reason",
            {"expr": 'sum(rate(trio_gateway_cancellations_total{model="m"}[5m]))'},
            "trio_gateway_cancellations_total has no label 'model'",
        ),
        (
            "Live tasks",
            {"expr": "sum by (instance) (trio_gateway_live_tasks)", "legendFormat": "{{pod}}"},
            "legend {{pod}} is not a label of the result",
        ),
        ("Live tasks", {"expr": "sum(trio_gatway_live_tasks)"}, "queries no trio_gateway_*"),
        ("Live tasks", {"datasource": {"uid": "prometheus"}}, "is not the template variable"),
    ],
)
def test_dashboard_checker_names_the_panel_and_the_problem(
    title: str, change: dict[str, Any], expected: str
) -> None:
    dashboard = copy.deepcopy(load_dashboard())
    _first_target(dashboard, title).update(change)
    problems = dashboard_problems(dashboard)
    assert any(f"panel {title!r}" in p and expected in p for p in problems), problems


# ---------------------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------------------


@cache
def k8s_objects() -> tuple[dict[str, Any], ...]:
    objects = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return tuple(objects)


def k8s(kind: str, name: str) -> dict[str, Any]:
    found = [
        obj for obj in k8s_objects() if obj["kind"] == kind and obj["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"expected one {kind} {name} in deploy/k8s, found {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def only_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, workload["metadata"]["name"]
    container: dict[str, Any] = containers[0]
    return container


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"no container port named {port!r}"
    return int(named[port])


def service_link_env() -> dict[str, str]:
    """The Docker-link variables the kubelet gives pods for each Service with a cluster IP."""
    env: dict[str, str] = {}
    for service in (o for o in k8s_objects() if o["kind"] == "Service"):
        if service["spec"].get("clusterIP") == "None":
            continue
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        ip = "10.0.0.1"
        ports = service["spec"]["ports"]
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        env[f"{prefix}_PORT"] = f"tcp://{ip}:{ports[0]['port']}"
        for port in ports:
            number, proto = port["port"], port.get("protocol", "TCP")
            base = f"{prefix}_PORT_{number}_{proto}"
            if "name" in port:
                env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(number)
            env[base] = f"{proto.lower()}://{ip}:{number}"
            env[base + "_PROTO"] = proto.lower()
            env[base + "_PORT"] = str(number)
            env[base + "_ADDR"] = ip
    return env


def container_environ(workload: dict[str, Any]) -> dict[str, str]:
    """What the process sees; a `valueFrom` becomes a placeholder naming its source."""
    environ = service_link_env() if pod_spec(workload).get("enableServiceLinks", True) else {}
    container = only_container(workload)
    assert "envFrom" not in container, "envFrom is not understood by this test"
    for var in container.get("env", []):
        if "value" in var:
            environ[var["name"]] = str(var["value"])
        else:
            environ[var["name"]] = "valueFrom:" + json.dumps(var["valueFrom"], sort_keys=True)
    return environ


def container_argv(workload: dict[str, Any]) -> list[str]:
    container = only_container(workload)
    command = container.get("command") or dockerfile_json("ENTRYPOINT")
    return [str(part) for part in [*command, *container.get("args", [])]]


def config_of(workload: dict[str, Any], kind: type[Any]) -> Any:
    argv = container_argv(workload)
    assert argv[0] == "trio-gateway", argv
    args = build_parser().parse_args(argv[1:])
    assert args.command == ("worker" if kind is WorkerConfig else "serve"), argv
    return config_from_args(args, environ=container_environ(workload), kind=kind)


def gateway() -> dict[str, Any]:
    return k8s("Deployment", GATEWAY)


def worker() -> dict[str, Any]:
    return k8s("StatefulSet", WORKER)


def gateway_config() -> GatewayConfig:
    config: GatewayConfig = config_of(gateway(), GatewayConfig)
    return config


def worker_config() -> WorkerConfig:
    config: WorkerConfig = config_of(worker(), WorkerConfig)
    return config


def test_workloads_select_their_own_pods() -> None:
    for obj in k8s_objects():
        assert obj.get("apiVersion") and obj["metadata"].get("name"), obj
        if obj["kind"] in ("Deployment", "StatefulSet"):
            selector = obj["spec"]["selector"]["matchLabels"]
            assert selects(selector, pod_labels(obj)), obj["metadata"]["name"]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


@pytest.mark.parametrize(
    ("name", "prefix", "kind"),
    [(GATEWAY, ENV_PREFIX, GatewayConfig), (WORKER, WORKER_ENV_PREFIX, WorkerConfig)],
)
def test_service_links_do_not_set_settings(name: str, prefix: str, kind: type[Any]) -> None:
    """A Service named trio-gateway gives every pod TRIO_GATEWAY_PORT=tcp://IP:8000 unless
    service links are off, and the gateway reads that as its port."""
    workload = gateway() if kind is GatewayConfig else worker()
    if pod_spec(workload).get("enableServiceLinks", True) is False:
        return
    settings = {prefix + "CONFIG"} | {prefix + f.upper() for f in kind.__dataclass_fields__}
    clashes = sorted(settings & service_link_env().keys())
    assert not clashes, f"{name}: Service link variables set {clashes}; disable enableServiceLinks"


def test_gateway_probes() -> None:
    config, container = gateway_config(), only_container(gateway())
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/ready"
    assert liveness["path"] == "/live"
    assert resolve_port(container, readiness["port"]) == config.port
    assert resolve_port(container, liveness["port"]) == config.port


def test_gateway_listens_where_the_pod_and_service_say() -> None:
    config, workload, container = gateway_config(), gateway(), only_container(gateway())
    assert config.host == "0.0.0.0"
    assert config.port == GatewayConfig().port
    assert [p["containerPort"] for p in container["ports"]] == [config.port]
    service = k8s("Service", GATEWAY)
    assert selects(service["spec"]["selector"], pod_labels(workload))
    targets = [resolve_port(container, p["targetPort"]) for p in service["spec"]["ports"]]
    assert targets == [config.port]
    annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/port") == str(config.port)
    assert annotations.get("prometheus.io/path") == "/metrics"


def prestop_code(workload: dict[str, Any]) -> str:
    command = only_container(workload)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-c"], command
    code: str = command[2]
    compile(code, "preStop", "exec")
    return code


def test_prestop_drains_the_gateway() -> None:
    config = gateway_config()
    code = prestop_code(gateway())
    assert f"http://127.0.0.1:{config.port}/admin/drain?wait=true" in code
    assert re.search(r"method\s*=\s*['\"]POST['\"]", code)
    # Without an admin token the admin endpoints answer loopback clients only: the hook.
    assert not config.admin_token or "Authorization" in code


def test_grace_period_outlasts_the_drain() -> None:
    config, workload = gateway_config(), gateway()
    code = prestop_code(workload)
    grace = pod_spec(workload)["terminationGracePeriodSeconds"]
    sleep = sum(float(s) for s in re.findall(r"sleep\(\s*([\d.]+)\s*\)", code))
    timeout = re.search(r"timeout\s*=\s*([\d.]+)", code)
    assert timeout, "the drain call needs a timeout"
    assert float(timeout[1]) > config.drain_timeout_s, "the hook gives up before the drain ends"
    assert sleep + float(timeout[1]) <= grace
    assert grace > sleep + config.drain_timeout_s + config.graceful_timeout_s


def test_gateway_pod_disruption_budget() -> None:
    budget = k8s("PodDisruptionBudget", GATEWAY)
    workload = gateway()
    replicas = workload["spec"]["replicas"]
    assert replicas >= 2
    assert selects(budget["spec"]["selector"]["matchLabels"], pod_labels(workload))
    # At least one pod stays, and a node drain can still evict one.
    assert 1 <= budget["spec"]["minAvailable"] < replicas


def test_gateway_shares_sessions_through_redis() -> None:
    config = gateway_config()
    store = urlsplit(config.session_store)
    assert store.scheme == "redis"
    service = k8s("Service", REDIS)
    assert store.hostname == REDIS or str(store.hostname).startswith(REDIS + "."), store
    assert store.port in [p["port"] for p in service["spec"]["ports"]]
    redis = k8s("Deployment", REDIS)
    assert selects(service["spec"]["selector"], pod_labels(redis))
    redis_container = only_container(redis)
    for port in service["spec"]["ports"]:
        if port["port"] == store.port:
            assert resolve_port(redis_container, port["targetPort"]) == 6379


def test_gateway_dials_every_worker_pod() -> None:
    config, workers, wconfig = gateway_config(), worker(), worker_config()
    service = k8s("Service", workers["spec"]["serviceName"])
    assert service["spec"].get("clusterIP") == "None", "per-pod DNS names need a headless Service"
    assert selects(service["spec"]["selector"], pod_labels(workers))
    pods = set()
    for url in config.workers:
        parts = urlsplit(url)
        assert parts.scheme == "ws", url
        assert parts.port == wconfig.port, url
        match = re.fullmatch(
            rf"{WORKER}-(\d+)\.{service['metadata']['name']}(\..*)?", str(parts.hostname)
        )
        assert match, f"{url}: not a worker pod's DNS name"
        pods.add(int(match[1]))
    assert pods == set(range(workers["spec"]["replicas"])), "--worker list vs worker replicas"


def test_worker_ports() -> None:
    config, workload = worker_config(), worker()
    container = only_container(workload)
    assert config.host == "0.0.0.0"
    assert (config.port, config.metrics_port) == (WorkerConfig().port, WorkerConfig().metrics_port)
    assert sorted(p["containerPort"] for p in container["ports"]) == sorted(
        [config.port, config.metrics_port]
    )
    service = k8s("Service", WORKER)
    targets = {resolve_port(container, p["targetPort"]) for p in service["spec"]["ports"]}
    assert targets == {config.port, config.metrics_port}
    assert {p["port"] for p in service["spec"]["ports"]} == {config.port, config.metrics_port}
    annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/port") == str(config.metrics_port)
    assert annotations.get("prometheus.io/path") == "/metrics"
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/live")):
        action = container[probe]["httpGet"]
        assert resolve_port(container, action["port"]) == config.metrics_port
        assert action["path"] == path  # served beside /metrics on the metrics port


def test_worker_ids_are_the_pod_names() -> None:
    # The default id is host:port, 0.0.0.0:9001 on every pod; sessions are keyed by it.
    placeholder = worker_config().worker_id
    assert placeholder.startswith("valueFrom:")
    assert json.loads(placeholder.removeprefix("valueFrom:")) == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }


def test_gateway_and_workers_share_a_secret_token() -> None:
    token, expected = gateway_config().worker_token, worker_config().token
    assert token, "the gateway sends no worker token"
    assert token == expected, "the gateway and the workers read different tokens"
    assert "secretKeyRef" in json.loads(token.removeprefix("valueFrom:"))
    for workload in (gateway(), worker()):
        assert not {"--token", "--worker-token"} & set(container_argv(workload))


def test_worker_grace_period_outlasts_its_drain() -> None:
    grace = pod_spec(worker())["terminationGracePeriodSeconds"]
    assert grace > worker_config().drain_timeout_s


def test_gateway_and_workers_run_the_image_as_its_user() -> None:
    assert only_container(gateway())["image"] == only_container(worker())["image"]
    user = dockerfile_instructions("USER")[-1].split(":")[0]
    for workload in (gateway(), worker()):
        context = pod_spec(workload)["securityContext"]
        assert context["runAsNonRoot"] is True
        assert str(context["runAsUser"]) == user


# ---------------------------------------------------------------------------------------
# The Dockerfile
# ---------------------------------------------------------------------------------------


@cache
def dockerfile() -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [
        line
        for line in DOCKERFILE.read_text().splitlines()
        if not line.lstrip().startswith("#") and line.strip()
    ]
    text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    pairs = []
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        pairs.append((instruction.upper(), rest.strip()))
    return tuple(pairs)


def dockerfile_instructions(name: str) -> list[str]:
    return [rest for instruction, rest in dockerfile() if instruction == name]


def dockerfile_json(name: str) -> list[str]:
    (rest,) = dockerfile_instructions(name)
    value: list[str] = json.loads(rest)  # exec form: the process gets the signals itself
    return value


def test_docker_base_image() -> None:
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", dockerfile_instructions("FROM")[-1])


def test_docker_runs_as_non_root() -> None:
    users = dockerfile_instructions("USER")
    assert users, "no USER: the gateway would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit(), "runAsNonRoot can only verify a numeric USER"
    assert user != "0"
    last_from = max(i for i, (ins, _) in enumerate(dockerfile()) if ins == "FROM")
    last_user = max(i for i, (ins, _) in enumerate(dockerfile()) if ins == "USER")
    assert last_user > last_from


def test_docker_runs_the_gateway_on_all_interfaces() -> None:
    argv = dockerfile_json("ENTRYPOINT") + dockerfile_json("CMD")
    assert argv[0] == "trio-gateway"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve"
    config = config_from_args(args, environ={})
    assert config.host == "0.0.0.0"
    assert str(config.port) in dockerfile_instructions("EXPOSE")[0].split()


def test_docker_healthcheck_hits_live() -> None:
    (check,) = dockerfile_instructions("HEALTHCHECK")
    port = GatewayConfig().port
    assert f"http://127.0.0.1:{port}/live" in check
    command = json.loads(check[check.index("CMD") + 3 :])
    assert command[:2] == ["python", "-c"]
    compile(command[2], "HEALTHCHECK", "exec")


def test_docker_installs_pinned_from_the_lock() -> None:
    installs = [run for run in dockerfile_instructions("RUN") if "pip install" in run]
    assert installs, "nothing installed"
    for run in installs:
        assert re.search(r"(-c|--constraint)\s+requirements\.lock\b", run), run
        assert "--no-cache-dir" in run
    copied = [
        part
        for rest in dockerfile_instructions("COPY")
        for part in rest.split()[:-1]
        if not part.startswith("--")
    ]
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    for needed in ("pyproject.toml", "requirements.lock", "trio_gateway", readme):
        assert needed in copied, f"{needed} is not copied into the image"


def dockerignored(path: str) -> bool:
    ignored = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatch(path, c) or path.startswith(c + "/") for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_build_inputs_only() -> None:
    copied = [
        part
        for rest in dockerfile_instructions("COPY")
        for part in rest.split()[:-1]
        if not part.startswith("--")
    ]
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source), f"{source} is copied but .dockerignore drops it"
    for junk in (".git", ".venv", "tests", "trio_gateway/__pycache__"):
        assert dockerignored(junk), f"{junk} would be sent to the build"


# ---------------------------------------------------------------------------------------
# The vLLM overlay (deploy/k8s/vllm): the base's workers hosting a real engine
# ---------------------------------------------------------------------------------------

VLLM_OVERLAY = K8S / "vllm"


def json_patch_add(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 `add` operations (all the overlay uses), applied to a copy."""
    patched = copy.deepcopy(document)
    for operation in operations:
        assert operation["op"] == "add", operation
        *parents, last = operation["path"].lstrip("/").split("/")
        target: Any = patched
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target.insert(len(target) if last == "-" else int(last), operation["value"])
        else:
            assert last not in target, f"{operation['path']} would replace, not add"
            target[last] = operation["value"]
    return patched


def vllm_worker() -> dict[str, Any]:
    kustomization = yaml.safe_load((VLLM_OVERLAY / "kustomization.yaml").read_text())
    assert kustomization["resources"] == [".."]
    (patch,) = kustomization["patches"]
    assert patch["target"] == {"kind": "StatefulSet", "name": WORKER}
    operations = yaml.safe_load((VLLM_OVERLAY / patch["path"]).read_text())
    return json_patch_add(worker(), operations)


def test_vllm_overlay_workers_host_the_engine_in_their_pod() -> None:
    workload = vllm_worker()
    worker_container, engine = pod_spec(workload)["containers"]
    argv = [*dockerfile_json("ENTRYPOINT"), *worker_container["args"]]
    args = build_parser().parse_args(argv[1:])
    config: WorkerConfig = config_from_args(
        args, environ=container_environ(worker()), kind=WorkerConfig
    )
    upstream = urlsplit(config.upstream)
    assert (upstream.hostname, upstream.path) == ("127.0.0.1", "/v1")
    engine_args = [str(arg) for arg in engine["args"]]
    assert engine_args[engine_args.index("--port") + 1] == str(upstream.port)
    assert engine_args[engine_args.index("--host") + 1] == "127.0.0.1"  # pod-local only
    # Admission happens in the gateway: the worker takes no more than vLLM runs at once.
    assert config.max_inflight == int(engine_args[engine_args.index("--max-num-seqs") + 1])
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The pod's user (10001) needs a writable Hugging Face cache.
    mounts = {mount["mountPath"] for mount in engine["volumeMounts"]}
    hf_home = next(e["value"] for e in engine["env"] if e["name"] == "HF_HOME")
    assert hf_home in mounts
    volumes = {volume["name"] for volume in pod_spec(workload)["volumes"]}
    assert {mount["name"] for mount in engine["volumeMounts"]} <= volumes
