#!/usr/bin/env bash
# Checks the container image without a container runtime (none runs on the test
# machines):
#   1. hadolint lints the Dockerfile and fails on warnings (a rule that must be
#      ignored is ignored inline, with a comment saying why) and on missing OCI
#      labels (DL3049, raised from info to warning);
#   2. the Dockerfile's build stage runs scripts/build-release.sh and nothing else
#      runs cargo, so the image ships the build this script makes; its Rust tag is
#      rust-toolchain.toml's channel, its version and source labels are Cargo.toml's;
#      it runs as the nonroot user with herald as its entrypoint;
#   3. .dockerignore keeps build output, dependency folders and .git out of the
#      build context;
#   4. scripts/build-release.sh runs (a real release build): the binary's size and
#      `herald --version` are printed, and it must load no shared library beyond
#      those the runtime image (distroless/cc-debian12) has, and need no OpenSSL
#      symbol newer than the 3.0 series that image's libssl3 provides.
# hadolint comes from scripts/install-k8s-tools.sh (in $HERALD_K8S_TOOLS/bin, or on
# PATH).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "image-check: $*"; }
die() {
  echo "image-check: error: $*" >&2
  exit 1
}

tools_bin="${HERALD_K8S_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/herald/k8s-tools}/bin"
if [ -x "${tools_bin}/hadolint" ]; then
  hadolint="${tools_bin}/hadolint"
elif command -v hadolint >/dev/null 2>&1; then
  hadolint="$(command -v hadolint)"
else
  die "hadolint not found (in ${tools_bin} or on PATH): run scripts/install-k8s-tools.sh"
fi
command -v python3 >/dev/null 2>&1 || die "python3 is not installed or not on PATH"
python3 -c 'import tomllib' 2>/dev/null || die "Python 3.11 or newer is required (tomllib; found $(python3 --version 2>&1))"
command -v readelf >/dev/null 2>&1 || die "readelf (binutils) is not installed or not on PATH"

# --- 1. hadolint ----------------------------------------------------------------------
log "hadolint ($("${hadolint}" --version)) on Dockerfile"
"${hadolint}" --no-color --failure-threshold warning \
  --require-label org.opencontainers.image.title:text \
  --require-label org.opencontainers.image.description:text \
  --require-label org.opencontainers.image.version:text \
  --require-label org.opencontainers.image.revision:text \
  --require-label org.opencontainers.image.source:url \
  --require-label org.opencontainers.image.licenses:spdx \
  --warning DL3049 \
  Dockerfile || die "hadolint found problems in the Dockerfile (above)"

# --- 2. what the Dockerfile builds and runs -----------------------------------------
python3 - <<'PY' || die "the Dockerfile does not match the build or the workspace (above)"
import re
import sys
import tomllib

errors = []

# Instructions, with continuation lines joined and comments dropped.
instructions = []
current = ""
with open("Dockerfile") as f:
    for raw in f:
        line = raw.rstrip("\n")
        if not current and (line.lstrip().startswith("#") or not line.strip()):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""

stages = [rest for keyword, rest in instructions if keyword == "FROM"]
runs = [rest for keyword, rest in instructions if keyword == "RUN"]

with open("rust-toolchain.toml", "rb") as f:
    channel = tomllib.load(f)["toolchain"]["channel"]
with open("Cargo.toml", "rb") as f:
    package = tomllib.load(f)["workspace"]["package"]

# The build: scripts/build-release.sh, and no cargo call of the Dockerfile's own.
if not any(re.search(r"(^|[\s&;|])scripts/build-release\.sh(\s|$)", run) for run in runs):
    errors.append("no RUN instruction calls scripts/build-release.sh")
for run in runs:
    if re.search(r"(^|[\s&;|])cargo(\s|$)", run):
        errors.append(f"a RUN instruction calls cargo itself (use scripts/build-release.sh): {run}")

# The build stage's toolchain is the pinned one.
if not stages or not re.match(rf"rust:{re.escape(channel)}(-\S+)?\s+AS\s+\S+$", stages[0], re.I):
    errors.append(f"the first stage is not FROM rust:{channel}[-variant] AS <name> "
                  f"(rust-toolchain.toml's channel): FROM {stages[0] if stages else '(none)'}")

# Labels and defaults that come from the workspace.
args = {}
for keyword, rest in instructions:
    if keyword == "ARG" and "=" in rest:
        name, _, value = rest.partition("=")
        args[name] = value.strip('"')
if args.get("HERALD_VERSION") != package["version"]:
    errors.append(f"ARG HERALD_VERSION defaults to {args.get('HERALD_VERSION')!r}, "
                  f"the workspace version is {package['version']!r}")
labels = " ".join(rest for keyword, rest in instructions if keyword == "LABEL")
expected_labels = {
    "org.opencontainers.image.version": "${HERALD_VERSION}",
    "org.opencontainers.image.source": package["repository"],
    "org.opencontainers.image.licenses": package["license"],
}
for label, value in expected_labels.items():
    if f'{label}="{value}"' not in labels:
        errors.append(f'LABEL {label}="{value}" missing')

# The runtime stage: non-root, herald as the entrypoint, the ports of the example config.
last_stage = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM"):]
final = {keyword: rest for keyword, rest in last_stage}
if final.get("USER") != "65532:65532":
    errors.append(f"the runtime stage's USER is {final.get('USER')!r}, not 65532:65532")
if final.get("ENTRYPOINT") != '["/usr/local/bin/herald"]':
    errors.append(f"the runtime stage's ENTRYPOINT is {final.get('ENTRYPOINT')!r}")
with open("config/herald.example.toml", "rb") as f:
    example = tomllib.load(f)
ports = {example["server"]["port"], example["server"]["metrics_port"], example["grpc"]["port"]}
exposed = {int(p.split("/")[0]) for p in final.get("EXPOSE", "").split()}
if exposed != ports:
    errors.append(f"EXPOSE {sorted(exposed)}, the default ports are {sorted(ports)}")

for error in errors:
    print(f"image-check: Dockerfile: {error}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
log "Dockerfile builds with scripts/build-release.sh on rust:$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml), runs as 65532"

# --- 3. .dockerignore -----------------------------------------------------------------
[ -f .dockerignore ] || die "no .dockerignore: the build context would carry target/ and node_modules/"
for pattern in target '**/target' '**/node_modules' .git; do
  grep -qxF -- "${pattern}" .dockerignore || die ".dockerignore does not exclude ${pattern}"
done
# A later `!pattern` line would bring excluded files back.
if grep -q '^!' .dockerignore; then
  die ".dockerignore re-includes files (a line starting with !): $(grep '^!' .dockerignore | tr '\n' ' ')"
fi
log ".dockerignore excludes target, **/target, **/node_modules, .git"

# --- 4. the release build ---------------------------------------------------------------
log "release build (scripts/build-release.sh)"
scripts/build-release.sh
bin="${CARGO_TARGET_DIR:-target}/release/herald"
[ -x "${bin}" ] || die "scripts/build-release.sh left no ${bin}"
log "${bin}: $(du -h "${bin}" | cut -f1) ($(stat -c %s "${bin}") bytes)"
version="$("${bin}" --version)" || die "${bin} --version failed"
log "${bin} --version: ${version}"

# The shared libraries of distroless/cc-debian12: glibc's, libgcc_s and libstdc++, and
# OpenSSL 3.0 (Debian 12's libssl3: libssl and libcrypto), which librdkafka's TLS and
# SASL SCRAM use.
allowed='^((libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+|ld-linux-x86-64|ld-linux-aarch64)\.so\.[0-9]+|(libssl|libcrypto)\.so\.3)$'
needed="$(readelf -d "${bin}" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')"
while IFS= read -r lib; do
  [ -z "${lib}" ] || [[ "${lib}" =~ ${allowed} ]] ||
    die "${bin} needs ${lib}, which the runtime image (distroless/cc-debian12) does not have"
done <<<"${needed}"
glibc="$(readelf -V "${bin}" | grep -o 'GLIBC_[0-9.]*' | sort -V -u | tail -1)"
# Built against a newer OpenSSL than Debian 12's 3.0 (a build machine on Debian 13,
# say), the binary could need symbols the runtime's libssl3 lacks and fail to start.
openssl="$(readelf -V "${bin}" | grep -o 'OPENSSL_[0-9][0-9.]*' | sort -V -u | tail -1)"
if [ -n "${openssl}" ] && [[ ! "${openssl}" =~ ^OPENSSL_(1\.|3\.0\.) ]]; then
  die "${bin} needs ${openssl}, newer than the runtime image's OpenSSL 3.0 (Debian 12): build on Debian 12 (bookworm)"
fi
log "${bin} needs OpenSSL symbols up to ${openssl:-none} (Debian 12's libssl3 is 3.0)"
log "${bin} loads only $(echo "${needed}" | tr '\n' ' ')(newest symbol version ${glibc}; Debian 12 has GLIBC_2.36)"
log "done"
