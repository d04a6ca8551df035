"""The deployment files in ``deploy/`` are valid for the tools that read them, and agree with
e2actors itself:

- every YAML parses; every Kubernetes manifest validates (strict) against the schemas that the
  ``kubernetes-validate`` package ships, for the newest Kubernetes it knows and an older one;
- the policy and hardware in the manager's ConfigMap load with e2actors' own loaders;
- every command line (the containers' ``command``/``args``, the systemd unit's ``ExecStart``)
  parses with the ``e2actors`` command-line parser, and the files it names are where the
  manifests mount them;
- the systemd unit passes ``systemd-analyze verify`` with no warning (skipped without systemd);
- every PromQL expression of the Grafana dashboard parses (``promtool``) and uses only metric
  names and labels that a real run exports (the samples of :mod:`e2actors.manager.observe` for a
  run of the seed example, and of an agent's ``node_samples``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import need_tool

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "e2actors-agent.service"
DASHBOARD = DEPLOY / "grafana" / "e2actors.json"

kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the test extra)")


def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path, doc))
    return out


def by_kind(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in k8s_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# --- YAML and Kubernetes schemas -------------------------------------------------------------------
def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 5
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        assert docs, f"{f} holds no document"


@pytest.mark.parametrize("version", [kv.latest_version(), "1.29.0"])
def test_kubernetes_manifests_validate(version: str) -> None:
    docs = k8s_docs()
    kinds = {d["kind"] for _, d in docs}
    assert {"Namespace", "DaemonSet", "Deployment", "ConfigMap", "Service"} <= kinds
    for path, doc in docs:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:  # pragma: no cover - the message is the point
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']} against Kubernetes {version}: "
                        f"{e.message} at {'.'.join(map(str, e.path))}")
        assert doc["metadata"].get("namespace", "e2actors") == "e2actors" or doc["kind"] == "Namespace"


def test_a_broken_manifest_is_caught() -> None:
    """The validation above can fail: a misspelt field is rejected in strict mode."""
    ds = json.loads(json.dumps(by_kind("DaemonSet")))
    ds["spec"]["template"]["spec"]["hostNetwrk"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, kv.latest_version(), strict=True)


# --- what the manifests say ------------------------------------------------------------------------
def container(doc: dict[str, Any]) -> dict[str, Any]:
    (c,) = doc["spec"]["template"]["spec"]["containers"]
    return c


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' ``$(VAR)`` expansion in args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def parse_cli(argv: list[str]) -> Any:
    from e2actors.cli import build_parser

    assert argv[0] == "e2actors", argv
    return build_parser().parse_args(argv[1:])


def mounted_files(doc: dict[str, Any]) -> dict[str, str]:
    """Files the pod sees from Secrets/ConfigMaps: path -> 'secret:NAME/KEY' or 'configmap:NAME/KEY'."""
    spec = doc["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec["volumes"]}
    out = {}
    for m in container(doc)["volumeMounts"]:
        v = vols[m["name"]]
        if "secret" in v:
            for it in v["secret"]["items"]:
                out[f"{m['mountPath']}/{it['path']}"] = f"secret:{v['secret']['secretName']}/{it['key']}"
        if "configMap" in v:
            cm = by_kind("ConfigMap", v["configMap"]["name"])
            for key in cm["data"]:
                out[f"{m['mountPath']}/{key}"] = f"configmap:{v['configMap']['name']}/{key}"
    return out


def test_agent_daemonset() -> None:
    ds = by_kind("DaemonSet", "e2actors-agent")
    pod = ds["spec"]["template"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    spec = pod["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    c = container(ds)
    sc = c["securityContext"]
    assert {"NET_RAW", "NET_ADMIN"} <= set(sc["capabilities"]["add"]) and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["allowPrivilegeEscalation"] is False
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    args = parse_cli(c["command"] + expand(c["args"], {"NODE_IP": "10.0.0.11", "NODE_NAME": "node-a"}))
    assert args.command == "agent"
    assert args.listen == "tcp://10.0.0.11:7400" and args.name == "node-a"
    assert mounted_files(ds)[args.secret_file] == "secret:e2actors-secret/secret"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["control"] == 7400 and ports["metrics"] == args.metrics_port
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == args.metrics_port
    # The hardware file's servers offer what the agents offer.
    hw = yaml.safe_load(by_kind("ConfigMap", "e2actors-policy")["data"]["hardware.yaml"])
    assert all(s["cores"] == args.cores and s["address"].endswith(":7400") for s in hw["servers"])


def test_manager_deployment_configmap_and_service() -> None:
    from e2actors.manager.hardware import Hardware
    from e2actors.manager.plan import make_plan
    from e2actors.manager.policy import Policy

    dep = by_kind("Deployment", "e2actors-manager")
    assert dep["spec"]["replicas"] == 1
    c = container(dep)
    args = parse_cli(c["command"] + c["args"])
    assert args.command == "run"
    files = mounted_files(dep)
    assert files[args.policy] == "configmap:e2actors-policy/policy.yaml"
    assert files[args.hardware] == "configmap:e2actors-policy/hardware.yaml"
    assert files[args.secret_file] == "secret:e2actors-secret/secret"
    assert args.metrics_addr == "0.0.0.0" and args.duration
    # The ConfigMap's policy and hardware load with e2actors' loaders, and plan.
    cm = by_kind("ConfigMap", "e2actors-policy")
    policy = Policy.from_yaml(cm["data"]["policy.yaml"], file="configmap:policy.yaml")
    hardware = Hardware.from_yaml(cm["data"]["hardware.yaml"], file="configmap:hardware.yaml")
    assert all(s.address for s in hardware.servers.values())
    assert {p.kind for p in hardware.ports.values()} == {"afpacket"}
    plan = make_plan(policy, hardware)
    assert set(plan.assignment.values()) <= set(hardware.servers)
    # The IDS rules are inline (agents have no copy of a rules file): they must parse.
    from e2actors.nf.builtin import IDS
    from e2actors.testing import run_pipelet

    ids = run_pipelet(IDS, [], config=policy.nfs["ids"].config).pipelet
    assert len(ids.rules) == 3
    # The Service selects the manager's pods and carries the Prometheus scrape annotations.
    svc = by_kind("Service", "e2actors-metrics")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    (port,) = svc["spec"]["ports"]
    cports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert cports[port["targetPort"]] == args.metrics_port == port["port"]
    ann = svc["metadata"]["annotations"]
    assert ann == {"prometheus.io/scrape": "true", "prometheus.io/port": str(args.metrics_port),
                   "prometheus.io/path": "/metrics"}


# --- systemd ------------------------------------------------------------------------------------
def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def test_systemd_unit_settings_and_command_line() -> None:
    s = unit_settings()
    assert s["Restart"] == ["on-failure"]
    assert s["LoadCredential"] == ["secret:/etc/e2actors/secret"]
    assert s["NoNewPrivileges"] == ["yes"]
    assert set(s["AmbientCapabilities"][0].split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert "AF_PACKET" in s["RestrictAddressFamilies"][0]
    (cmd,) = s["ExecStart"]
    env = {"E2_LISTEN": "tcp://10.0.0.1:7400", "CREDENTIALS_DIRECTORY": "/run/credentials/e2actors-agent.service",
           "E2_AGENT_OPTS": "--cores 6 --allow mycompany.nfs. --metrics-port 9401 --metrics-addr 10.0.0.1"}
    cmd = cmd.replace("%H", "host1")
    cmd = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], cmd)
    cmd = re.sub(r"\$(\w+)", lambda m: env[m.group(1)], cmd)  # unbraced: split into words
    argv = shlex.split(cmd)
    assert argv[0] == "/opt/e2actors/bin/e2actors"
    args = parse_cli(["e2actors", *argv[1:]])
    assert args.command == "agent" and args.secret_file == "/run/credentials/e2actors-agent.service/secret"
    assert args.cores == 6 and args.allow == ["mycompany.nfs."] and args.metrics_port == 9401


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: the systemd package)")
    exe = shutil.which("e2actors") or str(Path(os.sys.executable).parent / "e2actors")
    if not os.access(exe, os.X_OK):
        pytest.skip("no e2actors executable to stand in for /opt/e2actors/bin/e2actors")
    # verify checks that ExecStart's program exists: point it at this installation's.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/e2actors/bin/e2actors", exe))
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    mine = [ln for ln in (r.stdout + r.stderr).splitlines() if UNIT.name in ln or "e2actors" in ln]
    assert r.returncode == 0 and not mine, r.stdout + r.stderr
    # ... and it does complain about a bad unit (so the check above means something).
    unit.write_text(UNIT.read_text().replace("/opt/e2actors/bin/e2actors", exe)
                    .replace("Restart=on-failure", "Restart=sometimes"))
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "sometimes" in r.stdout + r.stderr


# --- Grafana --------------------------------------------------------------------------------------
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}
PROMQL_WORDS = {
    # aggregations, functions used in dashboards, keywords
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "label_replace", "label_join",
    "abs", "ceil", "floor", "round", "clamp", "clamp_min", "clamp_max", "vector", "scalar", "time", "absent",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "last_over_time", "changes", "resets",
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless",
}
#: Labels Prometheus itself adds to every scraped series.
TARGET_LABELS = {"job", "instance"}


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                exprs.append(t["expr"])
            walk(p.get("panels", []))

    walk(dash["panels"])
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
            assert m, f"variable {v['name']}: {q}"
            exprs.append(f"group by ({m.group(2)}) ({m.group(1)})")  # the same question in PromQL
    return exprs


def promql_uses(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, labels named in its matchers and in by/without clauses of the expression)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    s = re.sub(r"\[[^\]]*\]", "", s)  # range durations
    grouping = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", s):
        grouping |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", s)
    uses = []
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{([^}]*)\})?", s):
        word, matchers = m.group(1), m.group(3)
        if word in PROMQL_WORDS and matchers is None:
            continue
        labels = {x.split("=")[0].split("!")[0].strip().rstrip("~") for x in (matchers or "").split(",") if x.strip()}
        uses.append((word, labels | grouping))
    return uses


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Metric name -> label names, from the samples of a real (short) run and of an agent node."""
    from e2actors.agent import node_samples
    from e2actors.manager.manager import Manager, Traffic
    from e2actors.manager.observe import histograms_from_stats, samples_from_stats
    from e2actors.manager.policy import Policy
    from e2actors.runtime.node import Node

    seed = ROOT / "examples" / "seed"

    async def run() -> list:
        mgr = Manager()
        try:
            plan = mgr.plan(Policy.load(seed / "policy.yaml"))
            await mgr.deploy(plan, Traffic(pcap=str(seed / "traffic.pcap")))
            await mgr.wait_done(timeout=30)
            await mgr.scale("shaper", 3)  # a scaling event beyond the deployment
            st = await mgr.stats()
            hists = [(name, "histogram", help_, labels, 0.0) for name, help_, labels, _b, _s in histograms_from_stats(st)]
            return samples_from_stats(st, mgr.instance_counts(), mgr.events, dict(mgr.plan_.assignment)) + hists
        finally:
            await mgr.stop()

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("run"))  # the seed logger writes out/unsafe.pcap
    try:
        samples = asyncio.run(run())
    finally:
        os.chdir(cwd)
    node = Node("agent-1", cores=2)
    node.counters["auth_failed"] += 1
    samples += node_samples(node)
    from e2actors.runtime.metrics import Metrics, build_info

    endpoint = Metrics()  # every metrics endpoint's own counters
    endpoint.http["requests"] += 1
    samples += endpoint.http_samples() + build_info()
    out: dict[str, set[str]] = {}
    for name, kind, _help, labels, _value in samples:
        out.setdefault(name, set()).update(labels)
        KINDS[name] = kind
    return out


KINDS: dict[str, str] = {}  # metric name -> counter | gauge, filled by the fixture


def test_dashboard_is_valid_json_with_the_four_views() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    titles = " | ".join(p["title"] for p in dash["panels"])
    for want in ("Throughput per NF", "Drops by reason", "Instances per NF", "Scaling events"):
        assert want in titles
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}"


def test_dashboard_queries_use_only_exported_metrics(exported: dict[str, set[str]]) -> None:
    # The names in the exporter's source, too (a metric added there but missing in a run shows here).
    src = "".join((ROOT / "e2actors" / f).read_text() for f in ("manager/observe.py", "agent.py", "runtime/metrics.py"))
    in_source = set(re.findall(r'"(e2_[a-z_]+)"', src))
    assert in_source == set(exported), in_source ^ set(exported)
    used = set()
    for expr in dashboard_exprs():
        uses = promql_uses(expr)
        assert uses, expr
        for name, labels in uses:
            assert name in exported, f"{name!r} in {expr!r} is not a metric e2actors exports: {sorted(exported)}"
            unknown = labels - exported[name] - TARGET_LABELS
            assert not unknown, f"{expr!r}: {name} has no label {sorted(unknown)} (labels: {sorted(exported[name])})"
            used.add(name)
    for want in ("e2_instance_packets_total", "e2_drops_total", "e2_nf_instances", "e2_scaling_events_total"):
        assert want in used


def test_dashboard_queries_parse_with_promtool(tmp_path: Path) -> None:
    promtool = need_tool("promtool")
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        for k, v in GRAFANA_VARS.items():
            expr = expr.replace(k, v)
        expr = re.sub(r"\$\w+", ".*", expr)  # dashboard variables: regex matchers
        rules.append({"record": f"e2:dashboard_{i}", "expr": expr})
    f = tmp_path / "rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_metrics_reference_lists_every_metric_with_its_type_and_labels(exported: dict[str, set[str]]) -> None:
    """docs/metrics.md's tables: one row per exported metric, with its exact type and labels."""
    rows = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        m = re.match(r"\|\s*`(e2_\w+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if m:
            rows[m.group(1)] = (m.group(2), set(re.findall(r"`(\w+)`", m.group(3))))
    assert set(rows) == set(exported), set(rows) ^ set(exported)
    for name, (kind, labels) in rows.items():
        assert kind == KINDS[name], f"{name}: documented as {kind}, exported as {KINDS[name]}"
        assert labels == exported[name], f"{name}: documented labels {sorted(labels)}, exported {sorted(exported[name])}"
