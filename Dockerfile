# syntax=docker/dockerfile:1
#
# Herald's container image: one image for every role, the role is the command.
#
#   docker build -t herald .
#   docker run --rm -p 6001:6001 -p 9091:9091 herald dev
#   docker run --rm -v "$PWD/herald.toml:/etc/herald/herald.toml:ro" herald edge --config /etc/herald/herald.toml
#   docker run --rm -v "$PWD/herald.toml:/etc/herald/herald.toml:ro" herald dispatcher --config /etc/herald/herald.toml
#
# There is no default CMD: `herald edge` and `herald dispatcher` need a configuration
# (Redis, Kafka, apps) and `herald dev` is a single in-memory node, so a deployment
# always names its role; without one, herald prints its usage and exits 2.
#
# The build stage runs scripts/build-release.sh, the same release build the test
# suite runs (scripts/image-check.sh fails if this file stops calling it, or if the
# Rust tag or the version below drift from rust-toolchain.toml and Cargo.toml).

# Build stage. The tag is rust-toolchain.toml's channel. The full (not -slim) image
# already has the C toolchain, make, perl and python3 that librdkafka's configure and
# make use (librdkafka built from source, no cmake), and pkg-config and libssl-dev
# for its TLS and SASL (the system's OpenSSL), so nothing is installed with apt
# (scripts/build-release.sh runs scripts/install-build-deps.sh, which finds them).
# Debian 12 (bookworm), like the runtime image: the binary must not need a newer
# glibc, nor a newer OpenSSL than its 3.0, than the runtime has.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
# The toolchain and components that rust-toolchain.toml names, in a layer of their
# own so a source change does not download them again.
COPY rust-toolchain.toml ./
RUN rustup toolchain install
COPY . .
# The cargo registry and target folder are build caches, so a rebuild only compiles
# what changed; the binary is copied out of the cache in the same step, unstripped:
# the release profile keeps line tables (Cargo.toml) so backtraces and profiles name
# source lines, and the image ships the very binary the test suite checked.
RUN --mount=type=cache,id=herald-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=herald-target,target=/src/target \
    scripts/build-release.sh \
    && install -D -m 0755 target/release/herald /out/herald

# Runtime stage: distroless/cc (Debian 12) holds glibc, libgcc_s, libstdc++, OpenSSL,
# CA certificates, tzdata and the nonroot user (65532), but no shell and no package
# manager. herald loads only glibc, libgcc_s and Debian 12's OpenSSL 3.0 (libssl3,
# for librdkafka's TLS and SASL SCRAM; scripts/image-check.sh checks): librdkafka and
# zlib are linked in statically (scripts/build-release.sh), Herald's own TLS is
# rustls. A newer distroless base brings Debian's OpenSSL security fixes to the same
# herald binary. debian-slim would only add a shell and apt for an intruder to
# use; the `:nonroot` tag's user is 65532, set again below.
FROM gcr.io/distroless/cc-debian12:nonroot

# The workspace version (Cargo.toml [workspace.package]); override for a release
# build: --build-arg HERALD_VERSION=... --build-arg HERALD_REVISION="$(git rev-parse HEAD)".
ARG HERALD_VERSION=0.1.0
ARG HERALD_REVISION=unknown
LABEL org.opencontainers.image.title="herald" \
      org.opencontainers.image.description="Horizontally scaled, Pusher-compatible realtime pub/sub server: herald dev, herald edge, herald dispatcher" \
      org.opencontainers.image.version="${HERALD_VERSION}" \
      org.opencontainers.image.revision="${HERALD_REVISION}" \
      org.opencontainers.image.source="https://example.invalid/herald" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /out/herald /usr/local/bin/herald

# herald listens on 127.0.0.1 by default, which no one outside the container can
# reach; every listener (WebSocket and HTTP API, gRPC, metrics) uses server.host.
# HERALD_* variables override the config file, so a pod that wants another address
# sets HERALD_SERVER__HOST itself.
ENV HERALD_SERVER__HOST=0.0.0.0
USER 65532:65532
# 6001: WebSocket clients (/app/{key}) and the Pusher HTTP API (server.port);
# 50051: gRPC API (grpc.port); 9091: /healthz, /readyz, /metrics (server.metrics_port).
EXPOSE 6001 50051 9091
ENTRYPOINT ["/usr/local/bin/herald"]
