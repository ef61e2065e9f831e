#!/usr/bin/env python3
"""Assertions on the Herald chart's rendered manifests (scripts/helm-test.sh runs this).

    check.py RENDERED_DIR

RENDERED_DIR holds one `helm template` output per values file of tests/helm/values
(<case>.yaml). For each case:
  - every manifest validates, strictly, against the Kubernetes schemas of the chart's
    lowest supported version (Chart.yaml kubeVersion) with kubernetes-validate; the two
    CRD kinds (ServiceMonitor, PrometheusRule, HTTPRoute) against tests/helm/crd-schemas;
  - the probes name the paths and the port the binary serves, the grace period exceeds
    preStop + shutdown_grace, the pods are hardened, secrets stay out of the ConfigMap;
  - the rendered herald.toml, with the Secret's (or existing-secret.env's) variables and
    each pod's own env, passes the real `herald check-config` ($HERALD_BIN);
  - dispatchers get their group.instance.id from their (distinct) pod names; every
    edge, dev and dispatcher pod gets POD_NAME from its pod name (its spans' k8s.pod.name);
  - [telemetry] is in herald.toml exactly when telemetry.otlpEndpoint is set, with the
    values' keys under Herald's names, and the NetworkPolicies then let every pod reach
    the collector (networkPolicy.otlpTo, on otlpPorts or the endpoint's port), else
    nothing beyond DNS, the backbone and webhook endpoints.
Writes <case>.json (the manifests as a JSON list) for tests/helm/run.test.mjs.
Any failure exits 1 naming the case and the object.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CHART = ROOT / "helm" / "herald"
HERALD_BIN = os.environ.get("HERALD_BIN", str(ROOT / "target" / "debug" / "herald"))

failures = []


def check(cond, case, what):
    if not cond:
        failures.append(f"{case}: {what}")
    return cond


def kube_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    m = re.match(r"^>=\s*(\d+\.\d+)\.\d+", chart["kubeVersion"])
    if not m:
        sys.exit(f"Chart.yaml kubeVersion {chart['kubeVersion']!r} has no lower bound")
    return m.group(1) + ".0"


def duration_secs(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)\s*(ms|s|m|h|d)", text)
    assert parts, f"not a duration: {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute-gateway-v1.json",
}


def validate(case, docs, version):
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        crd = CRD_SCHEMAS.get((d["apiVersion"], d["kind"]))
        try:
            if crd:
                jsonschema.validate(d, json.loads((HERE / "crd-schemas" / crd).read_text()))
            else:
                kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.utils.SchemaNotFoundError:
            check(False, case, f"{name}: no Kubernetes {version} schema for {d['apiVersion']} {d['kind']}")
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as e:
            path = ".".join(str(p) for p in e.path)
            check(False, case, f"{name} invalid against Kubernetes {version}: {path}: {e.message}")


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def container_port(container, name):
    for p in container.get("ports", []):
        if p["name"] == name:
            return p["containerPort"]
    return None


def secret_env(case, docs, pod_spec):
    """The variables envFrom gives the container: the chart's Secret, or the fixture."""
    env = {}
    for src in pod_spec["containers"][0].get("envFrom", []):
        ref = src["secretRef"]["name"]
        secrets = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == ref]
        if secrets:
            env.update(secrets[0]["stringData"])
        else:
            # existingSecret: the operator's Secret; the test's stand-in for it.
            for line in (HERE / "existing-secret.env").read_text().splitlines():
                if line and not line.startswith("#"):
                    k, v = line.split("=", 1)
                    env[k] = v
    return env


def pod_env(container, pod_name):
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[e["name"]] = pod_name
    return env


def case_values(case):
    """The chart's values for a case: values.yaml with the case's file over it (maps
    merged, as Helm does)."""
    def merge(base, over):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    return merge(defaults, yaml.safe_load((HERE / "values" / f"{case}.yaml").read_text()) or {})


def check_config(case, toml_text, env, role):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "herald.toml"
        path.write_text(toml_text)
        base = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        r = subprocess.run([HERALD_BIN, "check-config", "--config", str(path)],
                           env={**base, **env}, capture_output=True, text=True, timeout=60)
        check(r.returncode == 0, case,
              f"herald check-config refused the rendered config for the {role} "
              f"(exit {r.returncode}):\n{r.stdout}{r.stderr}\n--- herald.toml ---\n{toml_text}")


def check_workload(case, docs, w, toml, toml_text, role):
    name = f"{w['kind']}/{w['metadata']['name']}"
    spec = w["spec"]["template"]["spec"]
    c = spec["containers"][0]
    server = toml["server"]
    # Probes: the paths and port the binary serves (metrics_port: /healthz, /readyz).
    metrics = container_port(c, "metrics")
    check(metrics == server["metrics_port"], case,
          f"{name}: container port 'metrics' {metrics} is not server.metrics_port {server['metrics_port']}")
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        p = c.get(probe)
        if check(p is not None, case, f"{name}: no {probe}"):
            check(p["httpGet"]["path"] == path and p["httpGet"]["port"] == "metrics", case,
                  f"{name}: {probe} is {p['httpGet']}, want {path} on the metrics port")
    if role != "dispatcher":
        check(container_port(c, "http") == server["port"], case, f"{name}: port 'http' is not server.port")
        check(container_port(c, "grpc") == toml["grpc"]["port"], case, f"{name}: port 'grpc' is not grpc.port")
    # Drain: preStop, then Herald's spread over shutdown_grace, inside the grace period.
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = duration_secs(server["shutdown_grace"])
    tgps = spec["terminationGracePeriodSeconds"]
    check(tgps > pre_stop + grace, case,
          f"{name}: terminationGracePeriodSeconds {tgps} <= preStop {pre_stop} + shutdown_grace {grace}")
    # Hardening.
    sc, psc = c["securityContext"], spec["securityContext"]
    check(psc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is True, case, f"{name}: not runAsNonRoot")
    check(sc.get("readOnlyRootFilesystem") is True, case, f"{name}: root filesystem writable")
    check(sc.get("allowPrivilegeEscalation") is False, case, f"{name}: privilege escalation allowed")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], case, f"{name}: capabilities not all dropped")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", case, f"{name}: seccomp not RuntimeDefault")
    # Config and secret changes roll the pods.
    ann = w["spec"]["template"]["metadata"].get("annotations", {})
    check("checksum/config" in ann and "checksum/secret" in ann, case, f"{name}: no checksum annotations")
    # The config file is where the args say.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    check(c["args"][1:3] == ["--config", "/etc/herald/herald.toml"] and mounts.get("/etc/herald") == "config",
          case, f"{name}: args {c['args']} / mounts {mounts} do not give /etc/herald/herald.toml")
    # Spans name the pod: POD_NAME from the downward API, next to the chart's other env.
    pod_name = [e for e in c.get("env", []) if e["name"] == "POD_NAME"]
    check(len(pod_name) == 1 and pod_name[0].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
          case, f"{name}: POD_NAME is not the pod's metadata.name (downward API): {pod_name}")
    # The real binary accepts what the pod would run with.
    env = {**secret_env(case, docs, spec)}
    pods = [f"{w['metadata']['name']}-{i}" for i in range(w["spec"].get("replicas", 1))] or ["pod"]
    check_config(case, toml_text, {**env, **pod_env(c, pods[0])}, role)
    return c, spec, pods


def check_case(case, docs, version):
    validate(case, docs, version)
    # The config's ConfigMap; the dashboard's (grafanaDashboard) is checked by check_observability.
    cms = [m for m in by_kind(docs, "ConfigMap") if "herald.toml" in m.get("data", {})]
    if not check(len(cms) == 1, case, f"{len(cms)} ConfigMaps holding herald.toml"):
        return
    toml_text = cms[0]["data"]["herald.toml"]
    toml = tomllib.loads(toml_text)
    check("apps" not in toml and "webhooks" not in toml, case, "apps or webhooks in the ConfigMap")
    for s in by_kind(docs, "Secret"):
        for k, v in s["stringData"].items():
            for m in re.findall(r'"secret" = ("[^"]*")', v) + re.findall(r'"api_tokens" = \[("[^"]*")', v):
                check(json.loads(m) not in toml_text, case, f"secret value of {k} in the ConfigMap")

    deployments = by_kind(docs, "Deployment")
    statefulsets = by_kind(docs, "StatefulSet")
    check(len(deployments) == 1, case, f"{len(deployments)} Deployments, want 1 (edges or dev)")
    edge = deployments[0]
    dev = edge["spec"]["template"]["spec"]["containers"][0]["args"][0] == "dev"
    c, spec, _ = check_workload(case, docs, edge, toml, toml_text, "dev" if dev else "edge")
    if dev:
        check(edge["spec"]["replicas"] == 1 and edge["spec"]["strategy"]["type"] == "Recreate", case,
              "dev mode: not one pod replaced with Recreate")
        check(not statefulsets and not by_kind(docs, "HorizontalPodAutoscaler"), case,
              "dev mode renders dispatchers or an HPA")
    else:
        check(c["args"][0] == "edge", case, f"edge args {c['args']}")
        check(edge["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, case, "edges: maxUnavailable not 0")
        check(len(spec.get("topologySpreadConstraints", [])) >= 1, case, "edges: no topologySpreadConstraints")
    has_kafka = "kafka" in toml
    check(len(statefulsets) == (1 if has_kafka and not dev else 0), case,
          f"{len(statefulsets)} StatefulSets with kafka={has_kafka}")
    for sts in statefulsets:
        dc, _, pods = check_workload(case, docs, sts, toml, toml_text, "dispatcher")
        check(dc["args"][0] == "dispatcher", case, f"dispatcher args {dc['args']}")
        ids = [pod_env(dc, p).get("HERALD_KAFKA__PROPERTIES__group.instance.id") for p in pods]
        check(all(ids) and len(set(ids)) == len(ids) and len(ids) >= 2, case,
              f"dispatchers' group.instance.id not distinct: {ids}")
        # A second replica's env passes too (same file, its own id).
        check_config(case, toml_text, {**secret_env(case, docs, sts["spec"]["template"]["spec"]), **pod_env(dc, pods[-1])},
                     "dispatcher (last replica)")

    # Services: public WebSocket; API with HTTP and gRPC (appProtocol grpc); metrics.
    svcs = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    full = edge["metadata"]["name"].removesuffix("-edge")
    api = svcs.get(f"{full}-api")
    if check(api is not None, case, "no -api Service"):
        grpc = [p for p in api["spec"]["ports"] if p["name"] == "grpc"]
        check(grpc and grpc[0]["appProtocol"] == "grpc" and grpc[0]["targetPort"] == "grpc", case,
              f"API Service gRPC port {grpc}")
    check(full in svcs and f"{full}-metrics" in svcs, case, "public or metrics Service missing")

    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        down = hpa["spec"]["behavior"]["scaleDown"]
        pols = down["policies"]
        check(all(p["type"] == "Pods" and p["value"] == 1 for p in pols) and pols, case,
              f"HPA scale-down may remove more than one edge per period: {pols}")
        period = min(p["periodSeconds"] for p in pols)
        check(period >= spec["terminationGracePeriodSeconds"], case,
              f"HPA scale-down period {period}s shorter than an edge's drain")
    for ing in by_kind(docs, "Ingress"):
        a = ing["metadata"]["annotations"]
        check(int(a.get("nginx.ingress.kubernetes.io/proxy-read-timeout", "0")) >= 3600 and
              int(a.get("nginx.ingress.kubernetes.io/proxy-send-timeout", "0")) >= 3600, case,
              "Ingress without WebSocket-safe timeouts")
    # The helm test pod: `herald smoke` with the release's Services and the same config.
    tests = [p for p in by_kind(docs, "Pod") if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    if check(len(tests) == 1, case, f"{len(tests)} helm test pods"):
        args = tests[0]["spec"]["containers"][0]["args"]
        check(args[0] == "smoke", case, f"helm test pod args {args}")
        opts = dict(zip(args[1::2], args[2::2]))
        check(opts.get("--config") == "/etc/herald/herald.toml", case, "helm test pod: --config")
        check(opts.get("--ws", "").startswith(f"ws://{full}:") and opts.get("--http", "").startswith(f"http://{full}-api:")
              and opts.get("--grpc", "").startswith(f"http://{full}-api:"), case, f"helm test pod targets {opts}")

    check_telemetry(case, docs, toml)

    # Case-specific expectations.
    redis = toml.get("redis", {})
    if case == "redis-shards":
        check(len(redis.get("shards", [])) == 3 and not redis.get("cluster"), case, f"[redis] {redis}")
    if case == "redis-cluster":
        check(redis.get("cluster") is True and len(redis.get("shards", [])) == 3, case, f"[redis] {redis}")
    if case == "existing-secret":
        check(not by_kind(docs, "Secret"), case, "a Secret rendered although existingSecret is set")
        ref = c["envFrom"][0]["secretRef"]["name"] if c.get("envFrom") else None
        check(ref == "herald-apps", case, f"envFrom {ref}, want the existing Secret herald-apps")
    if case == "full":
        kinds = {d["kind"] for d in docs}
        want = {"Ingress", "HTTPRoute", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
                "ServiceMonitor", "PrometheusRule", "StatefulSet"}
        check(want <= kinds, case, f"missing kinds: {want - kinds}")
        check(toml["kafka"]["properties"]["security.protocol"] == "plaintext", case, "kafka properties not rendered")
        check_observability(case, docs)
    else:
        check(not by_kind(docs, "PrometheusRule"), case, "a PrometheusRule rendered although it is off by default")
        check(not [m for m in by_kind(docs, "ConfigMap") if "grafana_dashboard" in m["metadata"].get("labels", {})],
              case, "a dashboard ConfigMap rendered although it is off by default")


def check_telemetry(case, docs, toml):
    """[telemetry] from the telemetry values, and egress to the collector."""
    values = case_values(case)
    tv, np = values["telemetry"], values["networkPolicy"]
    endpoint = tv["otlpEndpoint"]
    if endpoint:
        want = {"otlp_endpoint": endpoint, "service_name": tv["serviceName"], "sample_ratio": tv["sampleRatio"],
                "export_timeout": tv["exportTimeout"], "max_queue_size": tv["maxQueueSize"]}
        if tv["resourceAttributes"]:
            want["resource_attributes"] = tv["resourceAttributes"]
        check(toml.get("telemetry") == want, case, f"[telemetry] {toml.get('telemetry')}, want {want}")
    else:
        check("telemetry" not in toml, case, f"[telemetry] rendered without telemetry.otlpEndpoint: {toml.get('telemetry')}")
    policies = by_kind(docs, "NetworkPolicy")
    check(bool(policies) == bool(np["enabled"]), case, f"{len(policies)} NetworkPolicies with networkPolicy.enabled={np['enabled']}")
    if endpoint:
        url = urlsplit(endpoint)
        ports = np["otlpPorts"] or [url.port or (443 if url.scheme == "https" else 80)]
        want = {"ports": [{"port": p, "protocol": "TCP"} for p in ports]}
        if np["otlpTo"]:
            want["to"] = np["otlpTo"]
    for pol in policies:
        name = f"NetworkPolicy/{pol['metadata']['name']}"
        egress = pol["spec"]["egress"]
        if endpoint:
            check(want in egress, case, f"{name}: no egress to the collector {want}: {egress}")
        else:
            known = [{53}, set(np["backbonePorts"]), set(np["webhookPorts"])]
            for rule in egress:
                check({p["port"] for p in rule.get("ports", [])} in known, case,
                      f"{name}: egress {rule} is neither DNS, the backbone nor webhooks (telemetry is off)")


def check_observability(case, docs):
    """full.yaml: the dashboard ConfigMap and the PrometheusRule carry the chart's files
    unchanged, but for the overrides, disabled rules and extra labels full.yaml sets."""
    dashboards = [m for m in by_kind(docs, "ConfigMap") if m["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    if check(len(dashboards) == 1, case, f"{len(dashboards)} ConfigMaps labelled grafana_dashboard: \"1\", want 1"):
        d = dashboards[0]
        shipped = json.loads(d["data"]["herald.json"])
        check(shipped == json.loads((CHART / "files" / "herald-dashboard.json").read_text()), case,
              "the dashboard ConfigMap is not files/herald-dashboard.json")
        check(d["metadata"].get("annotations", {}).get("grafana_folder") == "Herald", case, "dashboard annotations not rendered")
    rules = by_kind(docs, "PrometheusRule")
    if not check(len(rules) == 1, case, f"{len(rules)} PrometheusRules, want 1"):
        return
    pr = rules[0]
    check(pr["metadata"]["labels"].get("release") == "prometheus", case, "PrometheusRule labels not rendered")
    source = yaml.safe_load((CHART / "files" / "herald-rules.yaml").read_text())
    want = {r["alert"]: r for g in source["groups"] for r in g["rules"]}
    got = {r["alert"]: r for g in pr["spec"]["groups"] for r in g["rules"]}
    check(set(got) == set(want) - {"HeraldSlowConsumers"}, case,
          f"alerts {sorted(got)}, want the file's minus the disabled HeraldSlowConsumers")
    for name, r in got.items():
        expect = json.loads(json.dumps(want[name]))
        expect["labels"]["oncall"] = "herald"
        if name == "HeraldWebhookFailureRate":
            expect["for"] = "30m"
            expect["labels"]["severity"] = "critical"
        check(r == expect, case, f"PrometheusRule {name}: {r}, want {expect}")


def main():
    rendered = Path(sys.argv[1])
    version = kube_version()
    cases = sorted(p.stem for p in (HERE / "values").glob("*.yaml"))
    for case in cases:
        f = rendered / f"{case}.yaml"
        if not check(f.exists(), case, f"not rendered ({f})"):
            continue
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
        (rendered / f"{case}.json").write_text(json.dumps(docs, indent=1))
        n = len(failures)
        check_case(case, docs, version)
        print(f"  {case}: {len(docs)} manifests, checked against Kubernetes {version}: "
              f"{'ok' if len(failures) == n else f'{len(failures) - n} failure(s)'}")
    if failures:
        print(file=sys.stderr)
        print("\n".join(f"FAIL {f}" for f in failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
