# Petrel's container image: the `petrel` binary on a distroless base.
#
#   docker build -t petrel .
#   docker run -d --name petrel -p 1883:1883 \
#     -v "$PWD/passwd:/etc/petrel/passwd:ro" -v petrel-data:/var/lib/petrel petrel
#
# packaging/README.md says how to make the password file with this image.
# Needs BuildKit (the default builder since Docker Engine 23) for the cache
# mounts below.

# ---- builder: compile the broker ----------------------------------------
FROM rust:1.95.0-slim-bookworm AS builder

# tikv-jemalloc-sys compiles jemalloc from its C sources: a C compiler and make.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev make \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# The whole workspace as cargo loads it: the root manifest and lock file,
# .cargo/config.toml (it sets jemalloc's options at build time), and every
# member (the binary's crates, and benches and examples, which cargo reads
# to load the workspace). fuzz/ is not a member and is not sent.
COPY Cargo.toml Cargo.lock ./
COPY .cargo/ .cargo/
COPY crates/ crates/
COPY benches/ benches/
COPY examples/ examples/

# Dependency caching: the downloaded crates and the target directory live in
# BuildKit cache mounts, so a rebuild after a source change recompiles only
# what changed, and neither ends up in a layer. The binary is copied out of
# the cache mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p petrel --bin petrel \
 && install -D -m 0755 target/release/petrel /out/usr/local/bin/petrel

# The data directory, for the runtime stage to copy with its owner: a new
# volume mounted at /var/lib/petrel starts as a copy of the image's
# directory, ownership included, so the broker can write to it.
RUN install -d -m 0700 /out/var/lib/petrel

# ---- runtime -------------------------------------------------------------
# Distroless "cc": glibc, libgcc_s and libm (all the binary links), CA
# certificates, and no shell or package manager. It is Debian 12, the same
# glibc the builder links against. The health check is the binary itself
# (`petrel ctl ... health`), so nothing else is needed. For a shell to debug
# with, use the :debug-nonroot variant. Pin the base by digest
# (@sha256:...) for reproducible releases.
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="petrel" \
      org.opencontainers.image.description="Petrel, an MQTT 3.1, 3.1.1 and 5.0 broker" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

COPY --from=builder /out/usr/local/bin/petrel /usr/local/bin/petrel
COPY packaging/docker/petrel.toml /etc/petrel/petrel.toml
COPY --from=builder --chown=10001:10001 /out/var/lib/ /var/lib/

# A fixed, unprivileged uid and gid (no name needed): files in a volume or
# a bind mount can be given to it ahead of time (chown 10001:10001).
USER 10001:10001

VOLUME ["/var/lib/petrel"]
# 1883: MQTT. 8080: the HTTP listener (health, readiness, metrics, API);
# packaging/docker/petrel.toml binds it to loopback only, see there.
EXPOSE 1883 8080

# SIGTERM (docker stop) shuts the broker down gracefully; SIGHUP (docker
# kill -s HUP) reloads the configuration (limits, log level, authentication,
# ACLs, certificates) without dropping connections.
STOPSIGNAL SIGTERM

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["petrel", "ctl", "--url", "http://127.0.0.1:8080", "health"]

ENTRYPOINT ["petrel"]
CMD ["broker", "--config", "/etc/petrel/petrel.toml", "--data-dir", "/var/lib/petrel"]
