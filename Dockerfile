# Aegis: the proxy (`aegis`), its sandbox runner (`aegis-sandbox`, found next to
# `aegis`) and the load generator / demo backend (`aegis-loadgen`).
#
#   docker build -t aegis .
#   docker run --rm -p 8080:8080 -e AEGIS_ADMIN_TOKEN=change-me aegis
#   docker run --rm -p 8080:8080 -e AEGIS_ADMIN_TOKEN=change-me \
#       -v "$PWD/configs:/etc/aegis" -v "$PWD/demo/aegis.container.yaml:/etc/aegis/aegis.yaml:ro" aegis
#
# The config directory is /etc/aegis (watched), the state directory the volume
# /var/lib/aegis. The baked aegis.yaml (demo/aegis.container.yaml) listens on
# 0.0.0.0:8080 and puts the admin API on 0.0.0.0:9901, which off loopback needs
# a bearer token in AEGIS_ADMIN_TOKEN: without one, aegis refuses to start.
#
# Machines that cannot pull rust/debian images build the same image from a local
# Debian base and host-built binaries instead: demo/Dockerfile.local, demo/run.sh.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The workspace only: an edit to docs, demo or configs keeps the build layer.
COPY Cargo.toml Cargo.lock ./
COPY proxy proxy
COPY sandbox-runner sandbox-runner
COPY loadgen loadgen
RUN cargo build --release --locked -p aegis-proxy -p aegis-loadgen -p aegis-sandbox \
 && mkdir -p /out \
 && cp target/release/aegis target/release/aegis-sandbox target/release/aegis-loadgen /out/
# The release profile keeps debuginfo (~50 MB a binary); the image does not.
RUN strip --strip-debug /out/*

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl procps \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 aegis \
 && useradd --system --uid 10001 --gid aegis --home-dir /var/lib/aegis --shell /usr/sbin/nologin aegis \
 && mkdir -p /etc/aegis /var/lib/aegis \
 && chown aegis:aegis /var/lib/aegis
COPY --from=build /out/ /usr/local/bin/
COPY configs/routes.yaml configs/features.yaml /etc/aegis/
COPY demo/aegis.container.yaml /etc/aegis/aegis.yaml
USER aegis
WORKDIR /var/lib/aegis
VOLUME /var/lib/aegis
EXPOSE 8080 9901
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS -o /dev/null ${AEGIS_ADMIN_TOKEN:+-H "Authorization: Bearer $AEGIS_ADMIN_TOKEN"} http://127.0.0.1:9901/healthz || exit 1
ENTRYPOINT ["aegis"]
CMD ["run", "--config-dir", "/etc/aegis"]
