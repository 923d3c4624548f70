# syntax=docker/dockerfile:1
# aci-runner-controller container image.
#
#   docker build -t aci-runner-controller:dev \
#     --build-arg VERSION=$(git describe --tags --always) \
#     --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) .
#
# Stage 1 builds a release binary; stage 2 is distroless (no shell, no package manager), runs as
# the non-root user 65532 and contains only the binary (plus the base image's CA certificates).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The context is the workspace without tests, docs, charts or build output (see .dockerignore).
COPY . .
# Only the production package: `-p aci-runner-controller` compiles it and the core crate; the
# development tools (crates/devkit: simulators, harness, benchmarks) are a dev-dependency of its
# tests and are not compiled. BuildKit cache mounts keep the registry and target between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p aci-runner-controller --bin aci-runner-controller \
    && install -D -m 0755 target/release/aci-runner-controller /out/aci-runner-controller

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="aci-runner-controller" \
      org.opencontainers.image.description="Kubernetes controller that runs GitHub Actions self-hosted runners on Azure Container Instances" \
      org.opencontainers.image.source="https://github.com/aci-runners/aci-runner-controller" \
      org.opencontainers.image.url="https://github.com/aci-runners/aci-runner-controller" \
      org.opencontainers.image.documentation="https://github.com/aci-runners/aci-runner-controller/tree/main/docs" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="aci-runner-controller maintainers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
COPY --from=build --chown=0:0 /out/aci-runner-controller /usr/local/bin/aci-runner-controller
USER 65532:65532
EXPOSE 8080 8443
ENTRYPOINT ["/usr/local/bin/aci-runner-controller"]
CMD ["run"]
