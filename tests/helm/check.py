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
    nothing beyond DNS, the backbone and webhook endpoints;
  - [server.tls] and [grpc.tls] are in herald.toml exactly when tls.edge / tls.grpc name
    a Secret, with paths into that Secret's volume, which the edge (or dev) container
    mounts read-only as a directory (never subPath, so renewals reach it) and no other
    pod does: dispatchers mount no Secret, the helm test pod only the smokeTest.tls
    ones (a CA's ca.crt, its own client certificate); the Services and Ingress follow;
    no key material in any ConfigMap. check-config then reads real files: see
    mounted_secrets;
  - secretFiles: each Secret mounted read-only as a directory (never subPath) at its
    mountPath with the items asked for in the edge (or dev) and dispatcher pods, never in
    the helm test pod; check-config reads the files herald.toml names there (a Redis
    password file, a private CA as ca_file and ssl.ca.location, Kafka's sasl.password
    through property_files), each workload from its own mounts, with the stand-in
    Secrets of secret-files.yaml; none of their contents in a ConfigMap;
  - the helm test pod runs `herald smoke` against the Services' DNS names, wss:// and
    https:// where a listener serves TLS, with --server-name, --ca-file, --cert-file and
    --key-file as smokeTest.tls says, and no herald.toml; the real `herald smoke` starts
    with only the pod's own volumes: see smoke_loads.
Writes <case>.json (the manifests as a JSON list) for tests/helm/run.test.mjs.
Any failure exits 1 naming the case and the object.
"""
import atexit
import json
import os
import re
import shutil
import socket
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


_certificates = None


def certificates():
    """A throwaway CA and a certificate it signed (make-certs.sh), made once per run:
    the contents of every TLS Secret the rendered pods mount."""
    global _certificates
    if _certificates is None:
        root = Path(tempfile.mkdtemp(prefix="herald-helm-check-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        subprocess.run([str(HERE / "make-certs.sh"), str(root / "secret")], check=True, timeout=60)
        _certificates = root
    return _certificates


def secret_keys(name):
    """The keys of Secret `name` and their contents: the stand-in of secret-files.yaml
    (secretFiles' Secrets), else a kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt)
    from a freshly made CA and certificate."""
    fixture = yaml.safe_load((HERE / "secret-files.yaml").read_text())
    made = certificates() / "secret"
    if name not in fixture:
        return {k: (made / k).read_bytes() for k in ("tls.crt", "tls.key", "ca.crt")}
    return {k: (made / v[1:]).read_bytes() if v.startswith("@") else f"{v}\n".encode()
            for k, v in fixture[name].items()}


def secret_mounts(case, pod_spec, container, only=None):
    """The container's Secret volumes as real directories: mount path -> a local
    directory holding what the kubelet would put there, the keys the volume projects
    (its items, each as its path; without items every key of the Secret). A key the
    volume does not project stays missing; one the Secret lacks fails the case, as the
    pod would not start. only: the mount paths to lay out (default: all)."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    local_dirs = {}
    for mount in container.get("volumeMounts", []):
        secret = volumes.get(mount["name"], {}).get("secret")
        if not secret or (only and not only(mount["mountPath"])):
            continue
        local = Path(tempfile.mkdtemp(prefix=f"{case}-{mount['name']}-", dir=certificates()))
        keys = secret_keys(secret["secretName"])
        items = secret.get("items") or [{"key": k, "path": k} for k in keys]
        for item in items:
            if check(item["key"] in keys, case,
                     f"volume {mount['name']} projects {item['key']!r}, which Secret {secret['secretName']} lacks"):
                (local / item["path"]).parent.mkdir(parents=True, exist_ok=True)
                (local / item["path"]).write_bytes(keys[item["key"]])
        local_dirs[mount["mountPath"]] = local
    return local_dirs


def mounted_secrets(toml_text, *mounts):
    """herald.toml as a container would read it with Secret volumes mounted.

    The rendered herald.toml names files under the Secrets' mount paths
    (/etc/herald-tls/... for the listeners, the secretFiles mountPaths for Redis, Kafka
    and the dispatcher), which do not exist here, and `herald check-config` reads and
    checks them (PEM, the key is the certificate's, validity, a password file that is
    not empty, what librdkafka accepts): with the paths left as they are it would refuse
    every such config, and with the checks skipped it would prove nothing. So each
    Secret volume is made a real directory (secret_mounts) and each mount path in the
    file is rewritten to that directory. A path outside every mount, or a key the
    volume does not project, stays missing and check-config says so.
    mounts: secret_mounts results, merged."""
    for local_dirs in mounts:
        for mount_path, local in local_dirs.items():
            toml_text = toml_text.replace(f'"{mount_path}/', f'"{local}/')
    return toml_text


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


def check_workload(case, docs, w, toml, toml_text, role, listener_files=None):
    """listener_files: the (pod spec, container) whose Secret mounts hold the files
    [server.tls] / [grpc.tls] name, when not this workload's own (a dispatcher's): only
    those mounts of it are used, every other file must be in the workload's own."""
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
    # The real binary accepts what the pod would run with, its Secret volumes mounted.
    # check-config reads the listeners' TLS files as an edge does; a dispatcher mounts
    # none (it never reads them: run.test.mjs starts one without), so for it they are
    # where the edge has them. Every other file (secretFiles) from its own mounts.
    env = {**secret_env(case, docs, spec)}
    pods = [f"{w['metadata']['name']}-{i}" for i in range(w["spec"].get("replicas", 1))] or ["pod"]
    check_config(case, workload_toml(case, toml_text, spec, c, listener_files),
                 {**env, **pod_env(c, pods[0])}, role)
    return c, spec, pods


def workload_toml(case, toml_text, spec, c, listener_files=None):
    """herald.toml as check-config reads it for a workload: its own Secret mounts, and
    the listeners' (under /etc/herald-tls) of listener_files when given."""
    own = secret_mounts(case, spec, c)
    if not listener_files:
        return mounted_secrets(toml_text, own)
    listeners = secret_mounts(case, *listener_files, only=lambda path: path.startswith(f"{LISTENER_TLS_DIR}/"))
    return mounted_secrets(toml_text, own, listeners)


# Where the chart mounts the listeners' TLS Secrets (herald.tlsDir).
LISTENER_TLS_DIR = "/etc/herald-tls"


def check_case(case, docs, version):
    validate(case, docs, version)
    # The config's ConfigMap; the dashboard's (grafanaDashboard) is checked by check_observability.
    cms = [m for m in by_kind(docs, "ConfigMap") if "herald.toml" in m.get("data", {})]
    if not check(len(cms) == 1, case, f"{len(cms)} ConfigMaps holding herald.toml"):
        return
    toml_text = cms[0]["data"]["herald.toml"]
    toml = tomllib.loads(toml_text)
    check("apps" not in toml and "webhooks" not in toml, case, "apps or webhooks in the ConfigMap")
    for m in by_kind(docs, "ConfigMap"):
        for k, v in m.get("data", {}).items():
            check("-----BEGIN" not in v and "PRIVATE KEY" not in v, case,
                  f"ConfigMap/{m['metadata']['name']} {k}: PEM (certificate or key material) in a ConfigMap")
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
        dc, _, pods = check_workload(case, docs, sts, toml, toml_text, "dispatcher", listener_files=(spec, c))
        check(dc["args"][0] == "dispatcher", case, f"dispatcher args {dc['args']}")
        ids = [pod_env(dc, p).get("HERALD_KAFKA__PROPERTIES__group.instance.id") for p in pods]
        check(all(ids) and len(set(ids)) == len(ids) and len(ids) >= 2, case,
              f"dispatchers' group.instance.id not distinct: {ids}")
        # A second replica's env passes too (same file, its own id).
        sts_spec = sts["spec"]["template"]["spec"]
        check_config(case, workload_toml(case, toml_text, sts_spec, dc, (spec, c)),
                     {**secret_env(case, docs, sts_spec), **pod_env(dc, pods[-1])}, "dispatcher (last replica)")

    # Services: public WebSocket; API with HTTP and gRPC; metrics (appProtocols: check_tls).
    svcs = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    full = edge["metadata"]["name"].removesuffix("-edge")
    api = svcs.get(f"{full}-api")
    if check(api is not None, case, "no -api Service"):
        grpc = [p for p in api["spec"]["ports"] if p["name"] == "grpc"]
        check(grpc and grpc[0]["targetPort"] == "grpc", case, f"API Service gRPC port {grpc}")
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
    values = case_values(case)
    tests = [p for p in by_kind(docs, "Pod") if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    enabled = values["smokeTest"]["enabled"]
    if check(len(tests) == (1 if enabled else 0), case, f"{len(tests)} helm test pods with smokeTest.enabled={enabled}") and tests:
        check_smoke(case, docs, tests[0], values, full, svcs)

    check_telemetry(case, docs, toml)
    check_tls(case, docs, toml, values, edge, [*statefulsets, *tests], svcs.get(full), api)
    check_secret_files(case, docs, toml, values, [edge, *statefulsets], tests)

    # Case-specific expectations.
    redis = toml.get("redis", {})
    if case == "redis-shards":
        check(len(redis.get("shards", [])) == 3 and not redis.get("cluster"), case, f"[redis] {redis}")
    if case == "redis-cluster":
        check(redis.get("cluster") is True and len(redis.get("shards", [])) == 3, case, f"[redis] {redis}")
    if case == "managed-services":
        # Credentials as files only: the password, the CA and Kafka's sasl.password.
        kafka = toml.get("kafka", {})
        check(redis.get("url", "").startswith("rediss://") and redis.get("username") == "herald"
              and "password" not in redis and redis.get("password_file") and redis.get("ca_file"),
              case, f"[redis] {redis}")
        check(kafka.get("properties", {}).get("security.protocol") == "SASL_SSL"
              and set(kafka.get("property_files", {})) == {"sasl.password"}
              and not [k for k in kafka.get("properties", {}) if "password" in k], case, f"[kafka] {kafka}")
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


# The namespace scripts/helm-test.sh renders every case in.
NAMESPACE = "herald"


def check_smoke(case, docs, pod, values, full, svcs):
    """The helm test pod: `herald smoke` against the Services' DNS names, over TLS where
    the listener serves it, with the TLS flags smokeTest.tls asks for and the files they
    name in read-only mounts of exactly those Secrets (ca.crt of the CA's; tls.crt and
    tls.key of the client's), then smoke_loads."""
    name = f"Pod/{pod['metadata']['name']}"
    spec = pod["spec"]
    c = spec["containers"][0]
    args = c["args"]
    if not check(args[0] == "smoke" and len(args) % 2 == 1, case, f"{name}: args {args}"):
        return
    opts = dict(zip(args[1::2], args[2::2]))
    tls, st = values["tls"], values["smokeTest"]["tls"]
    edge_s = "s" if tls["edge"]["secretName"] else ""
    grpc_s = "s" if tls["grpc"]["secretName"] else ""

    def svc_port(svc, port_name):
        ports = [p["port"] for p in svcs.get(svc, {}).get("spec", {}).get("ports", []) if p["name"] == port_name]
        return ports[0] if ports else None

    want = {
        "--ws": f"ws{edge_s}://{full}.{NAMESPACE}.svc:{svc_port(full, 'ws')}",
        "--http": f"http{edge_s}://{full}-api.{NAMESPACE}.svc:{svc_port(f'{full}-api', 'http')}",
        "--grpc": f"http{grpc_s}://{full}-api.{NAMESPACE}.svc:{svc_port(f'{full}-api', 'grpc')}",
        "--timeout": values["smokeTest"]["timeout"],
    }
    # The app: smokeTest.app, else the first of apps (herald smoke wants one named when
    # there are several); with existingSecret the chart knows none.
    app = values["smokeTest"]["app"] or (not values["existingSecret"] and values["apps"] and values["apps"][0]["id"])
    if app:
        want["--app"] = app
    if st["serverName"]:
        want["--server-name"] = st["serverName"]
    # Flag -> (Secret, the key its file is, the keys the volume projects).
    files = {}
    if st["caSecretName"]:
        files["--ca-file"] = (st["caSecretName"], "ca.crt", ["ca.crt"])
    if st["clientSecretName"]:
        files["--cert-file"] = (st["clientSecretName"], "tls.crt", ["tls.crt", "tls.key"])
        files["--key-file"] = (st["clientSecretName"], "tls.key", ["tls.crt", "tls.key"])
    check(set(opts) == set(want) | set(files), case,
          f"{name}: flags {sorted(opts)}, want {sorted(set(want) | set(files))}")
    for flag, value in want.items():
        check(opts.get(flag) == value, case, f"{name}: {flag} {opts.get(flag)!r}, want {value!r}")
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    for flag, (secret, key, items) in files.items():
        path = Path(opts.get(flag, "/missing"))
        m = mounts.get(str(path.parent))
        if not check(m is not None, case, f"{name}: {flag} {path} is in no volume mount"):
            continue
        check(path.name == key and m.get("readOnly") is True and "subPath" not in m, case,
              f"{name}: {flag} {path} in {m}, want the key {key} of a read-only directory mount")
        source = volumes.get(m["name"], {}).get("secret", {})
        check(source.get("secretName") == secret and sorted(i["key"] for i in source.get("items", [])) == items,
              case, f"{name}: {flag} from {source}, want the Secret {secret!r} projecting exactly {items}")
    smoke_loads(case, docs, pod)


def smoke_loads(case, docs, pod):
    """The real `herald smoke`, as the test pod runs it, with only the pod's own
    volumes: no herald.toml (the pod mounts no ConfigMap: smoke takes its app from the
    Secret's environment, and a herald.toml would make it read every file it names, the
    listeners' and secretFiles' which the pod does not mount), its Secret volumes as
    directories (secret_mounts), the Services' host:port rewritten to a local port that
    refuses connections. It must get past the configuration (exit 64 otherwise) and
    reading its own TLS files to its first step, the WebSocket connection, and fail
    there."""
    spec = pod["spec"]
    c = spec["containers"][0]
    name = f"Pod/{pod['metadata']['name']}"
    check("--config" not in c["args"] and not [v for v in spec["volumes"] if "configMap" in v], case,
          f"{name}: loads a herald.toml (args {c['args']}, volumes {spec['volumes']}): it would read every "
          "file the configuration names, which the pod does not mount")
    local_dirs = {k: str(v) for k, v in secret_mounts(case, spec, c).items()}
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        refused = f"127.0.0.1:{closed.getsockname()[1]}"

        def local(arg):
            for mount_path, there in local_dirs.items():
                if arg.startswith(mount_path + "/"):
                    return there + arg[len(mount_path):]
            return re.sub(r"^(wss?|https?)://[^/]+$", rf"\g<1>://{refused}", arg)

        args = [local(a) for a in c["args"]]
        base = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        r = subprocess.run([HERALD_BIN, *args], env={**base, **secret_env(case, docs, spec)},
                           capture_output=True, text=True, timeout=60)
    check(r.returncode == 1 and "smoke: connect and subscribe failed" in r.stderr, case,
          f"herald smoke (the helm test pod, {' '.join(args)}) did not get to its first step "
          f"(exit {r.returncode}):\n{r.stdout}{r.stderr}")


TLS_SECTIONS = {"edge": "server", "grpc": "grpc"}


def check_tls(case, docs, toml, values, edge, others, public, api):
    """[server.tls] / [grpc.tls] from the tls values, the Secrets mounted where the file
    says in the edge (or dev) container, which serves the listeners, and in no other
    pod (`others`: dispatchers and the helm test pod, which never read those files),
    and what the Services and Ingress say of it."""
    tls = values["tls"]
    for listener, section in TLS_SECTIONS.items():
        t = tls[listener]
        got = toml.get(section, {}).get("tls")
        if not t["secretName"]:
            check(got is None, case, f"[{section}.tls] rendered without tls.{listener}.secretName: {got}")
            continue
        want_keys = {"cert_file", "key_file", "reload_interval"} | ({"client_ca_file", "client_auth"} if t["clientAuth"] else set())
        if not check(got is not None and set(got) == want_keys, case, f"[{section}.tls] {got}, want the keys {sorted(want_keys)}"):
            continue
        check(got["reload_interval"] == tls["reloadInterval"], case, f"[{section}.tls] reload_interval {got['reload_interval']}")
        if t["clientAuth"]:
            check(got["client_auth"] == t["clientAuth"], case, f"[{section}.tls] client_auth {got['client_auth']}")
        # Each file is in a read-only directory mount of the Secret that holds it.
        files = {"cert_file": (t["secretName"], "tls.crt"), "key_file": (t["secretName"], "tls.key")}
        if t["clientAuth"]:
            files["client_ca_file"] = (t["clientCASecretName"] or t["secretName"], "ca.crt")
        for pod in [edge]:
            spec = pod["spec"]["template"]["spec"]
            name = f"{pod['kind']}/{pod['metadata']['name']}"
            volumes = {v["name"]: v for v in spec["volumes"]}
            for container in spec["containers"]:
                mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
                for key, (secret, item) in files.items():
                    path = Path(got[key])
                    m = mounts.get(str(path.parent))
                    if not check(m is not None, case, f"{name}: [{section}.tls] {key} {path} is in no volume mount"):
                        continue
                    check(path.name == item, case, f"{name}: [{section}.tls] {key} {path}, want the Secret's {item}")
                    check(m.get("readOnly") is True and "subPath" not in m and "subPathExpr" not in m, case,
                          f"{name}: mount {m} of a TLS Secret is not a read-only directory (a subPath never sees renewals)")
                    source = volumes.get(m["name"], {}).get("secret", {})
                    check(source.get("secretName") == secret, case,
                          f"{name}: {path.parent} mounts {source.get('secretName')!r}, want the Secret {secret!r}")
                    items = [i["key"] for i in source.get("items", [])]
                    check(not items or item in items, case, f"{name}: the volume of {secret} does not project {item}: {items}")
    # The edge's Secret volumes are the tls values' and secretFiles' (nothing else is
    # mounted from Secrets); a dispatcher has secretFiles' only; the helm test pod only
    # smokeTest.tls's (their keys: check_smoke). Least privilege: a listener's key is
    # where it serves, Redis and Kafka credentials where Herald talks to them.
    named = {tls[listener][k] for listener in TLS_SECTIONS for k in ("secretName", "clientCASecretName")} - {""}
    smoke_named = {values["smokeTest"]["tls"][k] for k in ("caSecretName", "clientSecretName")} - {""}
    files_named = {f["secretName"] for f in values["secretFiles"]}
    for pod in [edge, *others]:
        spec = pod["spec"]["template"]["spec"] if "template" in pod["spec"] else pod["spec"]
        role = pod["metadata"]["labels"].get("app.kubernetes.io/component")
        allowed = {"edge": named | files_named, "dispatcher": files_named, "smoke": smoke_named}.get(role, set())
        for v in spec["volumes"]:
            if "secret" in v:
                check(v["secret"]["secretName"] in allowed, case,
                      f"{pod['kind']}/{pod['metadata']['name']} ({role}): Secret volume {v}, "
                      f"want only {sorted(allowed) or 'none'}")
        for c in spec["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in c:
                    check(c[probe]["httpGet"].get("scheme", "HTTP") == "HTTP", case,
                          f"{pod['metadata']['name']}: {probe} is not plain HTTP (the metrics port never serves TLS)")
    # The chart never renders the TLS Secrets (cert-manager or the operator owns them).
    for s in by_kind(docs, "Secret"):
        check(s["metadata"]["name"] not in named, case, f"the chart renders the TLS Secret {s['metadata']['name']}")
    # Service ports on a TLS listener say https (a mesh must not read them as cleartext).
    edge_proto = "https" if tls["edge"]["secretName"] else "http"
    grpc_proto = "https" if tls["grpc"]["secretName"] else "grpc"
    want = {("public", "ws"): edge_proto, ("api", "http"): edge_proto, ("api", "grpc"): grpc_proto}
    for (svc_name, port_name), proto in want.items():
        svc = {"public": public, "api": api}[svc_name]
        ports = [p for p in (svc or {}).get("spec", {}).get("ports", []) if p["name"] == port_name]
        check(len(ports) == 1 and ports[0].get("appProtocol") == proto, case,
              f"{svc_name} Service port {port_name}: {ports}, want appProtocol {proto}")
    for ing in by_kind(docs, "Ingress"):
        backend = ing["metadata"]["annotations"].get("nginx.ingress.kubernetes.io/backend-protocol")
        check(backend == ("HTTPS" if tls["edge"]["secretName"] else None), case,
              f"Ingress backend-protocol {backend!r} with tls.edge.secretName={tls['edge']['secretName']!r}")


def check_secret_files(case, docs, toml, values, workloads, tests):
    """secretFiles: each Secret a read-only directory mount (never subPath, so the
    kubelet's update of a rotated Secret reaches it) at its mountPath, projecting the
    items asked for, in every pod that loads herald.toml (`workloads`: the edges or the
    dev pod, the dispatchers) and in no other (`tests`: the helm test pod); the files
    herald.toml names in a mount are files it projects; and no content of the stand-in
    Secrets (secret-files.yaml) in any ConfigMap. check-config reading them from each
    workload's own mounts: check_workload."""
    files = values["secretFiles"]
    for w in workloads:
        name = f"{w['kind']}/{w['metadata']['name']}"
        spec = w["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            for i, f in enumerate(files):
                m = mounts.get(f["mountPath"])
                if not check(m is not None, case, f"{name}: secretFiles[{i}] is not mounted at {f['mountPath']}"):
                    continue
                check(m.get("readOnly") is True and "subPath" not in m and "subPathExpr" not in m, case,
                      f"{name}: mount {m} of secretFiles[{i}] is not a read-only directory (a subPath never sees an update)")
                source = volumes.get(m["name"], {}).get("secret", {})
                want_items = [{"key": it["key"], "path": it.get("path") or it["key"]} for it in f.get("items") or []]
                check(source.get("secretName") == f["secretName"] and source.get("items", []) == want_items
                      and source.get("defaultMode") == 0o440, case,
                      f"{name}: {f['mountPath']} mounts {source}, want Secret {f['secretName']!r} "
                      f"projecting {want_items or 'every key'}, mode 0440")
    for pod in tests:
        for secret in [v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v]:
            check(secret not in {f["secretName"] for f in files}, case,
                  f"Pod/{pod['metadata']['name']}: mounts secretFiles' Secret {secret}: "
                  "the helm test pod never reads those files")
    # Each file herald.toml names inside a mount with items is one of them.
    paths = re.findall(r'"(/[^"]*)"', json.dumps(toml))
    for f in files:
        if not f.get("items"):
            continue
        held = {it.get("path") or it["key"] for it in f["items"]}
        for path in paths:
            if path.startswith(f["mountPath"] + "/"):
                check(path[len(f["mountPath"]) + 1:] in held, case,
                      f"herald.toml names {path}, which secretFiles' {f['secretName']} does not project ({sorted(held)})")
    fixture = yaml.safe_load((HERE / "secret-files.yaml").read_text())
    for m in by_kind(docs, "ConfigMap"):
        for k, text in m.get("data", {}).items():
            for secret, keys in fixture.items():
                for key, value in keys.items():
                    check(value.startswith("@") or value not in text, case,
                          f"ConfigMap/{m['metadata']['name']} {k}: holds the content of Secret {secret}'s {key}")


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
