#!/usr/bin/env bash
# Tests of the Helm chart (helm/herald), offline:
#   1. the chart's appVersion is the workspace version; values are yamllint-clean;
#   2. `helm lint --strict` with every values file of tests/helm/values;
#   3. `helm template` of each, every manifest validated against the Kubernetes schemas
#      of the chart's lowest supported version, and assertions on the objects, the
#      rendered herald.toml checked by the real `herald check-config`, the helm test
#      pod's command by the real `herald smoke` (tests/helm/check.py; TLS files they
#      read are made with openssl by tests/helm/make-certs.sh, the secretFiles' Secrets
#      stand in tests/helm/secret-files.yaml);
#   4. every values file of tests/helm/bad refused with the message it names;
#   5. render and run: the rendered edge and dispatcher pods started as local processes
#      against a real redis-server and tansu, their probes, the `helm test` command
#      (`herald smoke`), SIGTERM within terminationGracePeriodSeconds with 4200
#      closes, a TLS pod on kubelet-style Secret volumes through a certificate
#      renewal with the `helm test` command over TLS against it, a dispatcher
#      without the listeners' Secrets, and edge and dispatcher pods on a TLS redis-server
#      as an ACL user with the password and CA from secretFiles (tests/helm/run.test.mjs);
#   6. the operator assets the chart ships (files/herald-dashboard.json, files/herald-rules.yaml):
#      they parse, and every metric they use is in the /metrics of a running `herald dev`
#      after traffic that records each (tests/observability/metrics.test.mjs).
# Tools: helm ($HELM, or scripts/install-k8s-tools.sh's, or helm on PATH), and a Python
# with kubernetes-validate, yamllint and PyYAML ($HERALD_K8S_PYTHON, or the installer's
# venv). A missing tool fails the run; nothing is skipped.
# HERALD_BIN: the herald binary (default target/debug/herald, built here if missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "helm-test: error: $*" >&2; exit 1; }

# Where scripts/install-k8s-tools.sh puts them.
tools="${HERALD_K8S_TOOLS:-$HOME/.cache/herald/k8s-tools}"
helm_bin="${HELM:-}"
if [ -z "$helm_bin" ]; then
  for candidate in "$tools/bin/helm" "$(command -v helm || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then helm_bin="$candidate"; break; fi
  done
fi
[ -n "$helm_bin" ] && [ -x "$helm_bin" ] || die "no helm binary (set HELM, or run scripts/install-k8s-tools.sh)"

py="${HERALD_K8S_PYTHON:-}"
if [ -z "$py" ]; then
  for candidate in "$tools/venv/bin/python"; do
    if [ -x "$candidate" ]; then py="$candidate"; break; fi
  done
fi
[ -n "$py" ] || die "no Python with kubernetes-validate (set HERALD_K8S_PYTHON, or run scripts/install-k8s-tools.sh)"
"$py" -c 'import kubernetes_validate, yaml, yamllint, jsonschema' \
  || die "$py lacks kubernetes-validate, PyYAML or yamllint"
command -v node >/dev/null || die "node is not on PATH"
command -v openssl >/dev/null || die "openssl is not on PATH (tests/helm/make-certs.sh)"
command -v redis-server >/dev/null || die "redis-server is not on PATH"
command -v "${TANSU:-tansu}" >/dev/null || die "tansu is not on PATH (set TANSU)"

export HERALD_BIN="${HERALD_BIN:-$PWD/target/debug/herald}"
if [ ! -x "$HERALD_BIN" ]; then
  cargo build --locked -p herald
fi

chart=helm/herald
work="$(mktemp -d "${TMPDIR:-/tmp}/herald-helm-test.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "-- helm: $("$helm_bin" version --short)"
workspace_version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
app_version="$(sed -n 's/^appVersion: "\(.*\)"/\1/p' "$chart/Chart.yaml")"
[ -n "$workspace_version" ] && [ "$app_version" = "$workspace_version" ] \
  || die "Chart.yaml appVersion '$app_version' is not the workspace version '$workspace_version'"

echo "-- yamllint"
"$py" -m yamllint --strict -d '{extends: default, rules: {line-length: {max: 100}}}' \
  "$chart/values.yaml" "$chart/Chart.yaml" "$chart/files/herald-rules.yaml" tests/helm/values tests/helm/bad \
  tests/helm/secret-files.yaml

for values in tests/helm/values/*.yaml; do
  case_name="$(basename "$values" .yaml)"
  echo "-- helm lint --strict -f $values"
  "$helm_bin" lint --strict "$chart" -f "$values" >"$work/lint.out" 2>&1 || { cat "$work/lint.out"; die "helm lint failed: $values"; }
  "$helm_bin" template herald-test "$chart" --namespace herald -f "$values" >"$work/$case_name.yaml" \
    || die "helm template failed: $values"
done

echo "-- rendered manifests: Kubernetes schemas and assertions"
"$py" tests/helm/check.py "$work"

echo "-- bad values are refused"
for values in tests/helm/bad/*.yaml; do
  expect="$(sed -n '1s/^# expect: //p' "$values")"
  [ -n "$expect" ] || die "$values: first line is not '# expect: TEXT'"
  if "$helm_bin" template herald-test "$chart" -f "$values" >/dev/null 2>"$work/err"; then
    die "$values: helm template accepted it"
  fi
  grep -qF -- "$expect" "$work/err" || { cat "$work/err"; die "$values: the error does not say '$expect'"; }
  echo "  $(basename "$values"): $(grep -m1 -F -- "$expect" "$work/err" | sed 's/^ *//')"
done

echo "-- render and run (edge + dispatcher pods as processes, redis-server, tansu)"
HELM="$helm_bin" HERALD_K8S_PYTHON="$py" node --test tests/helm/

echo "-- dashboard and alert rules against a running herald dev's /metrics"
HERALD_K8S_PYTHON="$py" node --test tests/observability/
