# syntax=docker/dockerfile:1
# The production image of `replicator`: the binary without the `demo` feature
# (no in-process test server), on distroless glibc, as a non-root user.
#
#   docker build -t replicator:0.1.0 .
#
# Every build step is scripts/build-image, which CI (scripts/test) runs as
# well, in a debug build: a broken step fails CI, not only `docker build`.
# Keep it that way: no RUN here but that script.
#
# Layout, as the C# Replicator's image: WORKDIR /app, configuration in
# /app/config/appsettings.yaml (mount a ConfigMap or a file over /app/config),
# status server, health and metrics on port 5000. Unlike the C# Helm chart's
# default (its issue #104: every restart started over), the checkpoint is on
# the volume: REPLICATOR_CHECKPOINT_PATH=/data/checkpoint. With a MongoDB
# checkpoint store, set REPLICATOR_CHECKPOINT_PATH to its connection string.

# The toolchain the workspace is tested with (README: 1.89 or later).
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN scripts/build-image --release --out /out

# glibc and libgcc, CA certificates, no shell; user nonroot is 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/rootfs/ /
COPY --from=build --chown=65532:65532 /out/data/ /data/
USER 65532:65532
WORKDIR /app
ENV REPLICATOR_CHECKPOINT_PATH=/data/checkpoint
VOLUME ["/data"]
EXPOSE 5000
# `replicator status --live` exits 0 while the instance is live (/health/live:
# not failed for good, not stuck), 2 while it answers but is not, 1 when
# nothing answers; Docker counts every non-zero code as a failed check. A peer
# that is down makes the instance unready, not unhealthy: it waits for it. Kubernetes ignores
# HEALTHCHECK and probes /health/live and /health/ready itself
# (deploy/kubernetes). Assumes the default http.listen port, 5000.
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/replicator", "status", "--live", "--url", "http://127.0.0.1:5000"]
ENTRYPOINT ["/usr/local/bin/replicator"]
CMD ["run"]
