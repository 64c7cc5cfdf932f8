# syntax=docker/dockerfile:1
# xbackend-controller image: a static binary on distroless, run as UID 65532.
#   docker build --build-arg VERSION=0.1.0 \
#     --build-arg SOURCE=https://<your git host>/xbackend-controller -t xbackend-controller:0.1.0 .
# Reproducible inputs: base images pinned by tag (pin by digest in your
# registry mirror for bit-for-bit rebuilds) and `cargo build --locked`.

# Build stage: the Rust version the project is tested with.
FROM docker.io/library/rust:1.95.0-bookworm AS build
WORKDIR /src
# The whole (allow-listed, see .dockerignore) context: Cargo.toml must load,
# and it names targets beyond src/.
COPY . .
# The same script `make static` and tests/deploy.rs run: a fully static binary
# (glibc, +crt-static; rustls + ring, no OpenSSL). The cache mounts keep
# crates and build output between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    OUT=/out/xbackend-controller hack/build-static.sh

# Runtime: no shell, no package manager; CA certificates and /etc/passwd
# (user nonroot, 65532) only.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=0.1.0
ARG SOURCE=""
LABEL org.opencontainers.image.title="xbackend-controller" \
      org.opencontainers.image.description="Controller for Gateway API XBackends: egress guardrails and status per Gateway" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/xbackend-controller /usr/local/bin/xbackend-controller
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/xbackend-controller"]
CMD ["run"]
