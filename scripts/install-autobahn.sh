#!/usr/bin/env bash
# Installs the Autobahn testsuite (autobahntestsuite 0.8.2, its `wstest` fuzzing
# client) into a Python 2.7 virtualenv, for scripts/autobahn.sh. The package runs on
# Python 2.7 only: a Python 2.7 must be on the machine (pyenv's, found under
# $PYENV_ROOT/versions/2.7.*, or python2.7 on PATH, or $AUTOBAHN_PYTHON); without one
# this fails loudly.
#
# Idempotent: a virtualenv that finished installing (it holds a marker file) is kept.
# It lives in $AUTOBAHN_VENV (default: ~/.cache/herald/autobahn-venv). virtualenv
# itself is fetched for 2.7 into a cache folder beside it when the Python has none,
# so the Python installation is never modified.
set -euo pipefail

AUTOBAHN_VERSION=0.8.2
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/herald"
VENV="${AUTOBAHN_VENV:-${CACHE_DIR}/autobahn-venv}"
MARKER="${VENV}/.herald-autobahn-${AUTOBAHN_VERSION}"

log() { echo "install-autobahn: $*"; }
die() {
  echo "install-autobahn: error: $*" >&2
  exit 1
}

if [ -f "${MARKER}" ] && [ -x "${VENV}/bin/wstest" ]; then
  log "autobahntestsuite ${AUTOBAHN_VERSION} present in ${VENV}"
  exit 0
fi

is_python27() {
  [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' >/dev/null 2>&1
}

python=""
for candidate in "${AUTOBAHN_PYTHON:-}" \
  $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7.*/bin/python2.7 2>/dev/null | sort -V -r) \
  "$(command -v python2.7 2>/dev/null || true)"; do
  if is_python27 "${candidate}"; then
    python="${candidate}"
    break
  fi
done
[ -n "${python}" ] || die "no Python 2.7 found (looked at \$AUTOBAHN_PYTHON, \
${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.*, python2.7 on PATH): the Autobahn testsuite \
runs only on Python 2.7; install one (pyenv install 2.7.18) or set AUTOBAHN_PYTHON"
log "using $("${python}" --version 2>&1) at ${python}"

# virtualenv for 2.7: the Python's own, or one kept in the cache (20.15.x is the
# newest line that still runs on, and creates, Python 2.7 environments).
virtualenv=(env "${python}" -m virtualenv)
if ! "${python}" -m virtualenv --version >/dev/null 2>&1; then
  bootstrap="${CACHE_DIR}/virtualenv-py27"
  if ! PYTHONPATH="${bootstrap}" "${python}" -m virtualenv --version >/dev/null 2>&1; then
    log "fetching virtualenv for Python 2.7 into ${bootstrap}"
    rm -rf "${bootstrap}"
    "${python}" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
      --target "${bootstrap}" "virtualenv==20.15.1" ||
      die "could not install virtualenv for Python 2.7 (pip for ${python})"
  fi
  virtualenv=(env "PYTHONPATH=${bootstrap}" "${python}" -m virtualenv)
fi

log "creating ${VENV}"
rm -rf "${VENV}"
mkdir -p "$(dirname "${VENV}")"
"${virtualenv[@]}" --quiet "${VENV}" || die "could not create a Python 2.7 virtualenv in ${VENV}"

# The versions that work together on Python 2.7, pinned so every machine runs the
# same client (the last releases of most of these that support 2.7).
constraints="$(mktemp)"
pip_log="$(mktemp)"
trap 'rm -f "${constraints}" "${pip_log}"' EXIT
cat >"${constraints}" <<'EOF'
attrs==21.4.0
autobahn==0.10.9
Automat==22.10.0
cffi==1.15.1
constantly==15.1.0
cryptography==3.3.2
enum34==1.1.10
hyperlink==21.0.0
idna==2.10
incremental==22.10.0
ipaddress==1.0.23
Jinja2==2.11.3
klein==20.6.0
linecache2==1.0.0
MarkupSafe==1.1.1
pyasn1==0.5.1
pyasn1-modules==0.3.0
pycparser==2.21
PyHamcrest==1.10.1
pyOpenSSL==21.0.0
service-identity==21.1.0
six==1.17.0
traceback2==1.4.0
Tubes==0.2.1
Twisted==20.3.0
txaio==2.1.0
typing==3.10.0.0
ujson==2.0.3
unittest2==1.1.0
Werkzeug==1.0.1
wsaccel==0.6.6
zope.interface==5.5.2
EOF
log "installing autobahntestsuite ${AUTOBAHN_VERSION} (about a minute)"
if ! "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  -c "${constraints}" "autobahntestsuite==${AUTOBAHN_VERSION}" >"${pip_log}" 2>&1; then
  cat "${pip_log}" >&2
  die "could not install autobahntestsuite ${AUTOBAHN_VERSION} into ${VENV}"
fi
[ -x "${VENV}/bin/wstest" ] || die "autobahntestsuite did not install (no ${VENV}/bin/wstest)"
"${VENV}/bin/wstest" --autobahnversion >/dev/null 2>&1 || die "wstest in ${VENV} does not run"
touch "${MARKER}"
log "done: ${VENV}/bin/wstest"
