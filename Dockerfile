# syntax=docker/dockerfile:1
# vendorhost image: the host binary plus the sample vendor plugins.
#   docker build -t vendorhost .
#   docker run --rm -p 8000:8000 vendorhost            # embedded default (serve)
#   docker compose up --build                          # production layout (see docker-compose.yml)

# ---- builder ---------------------------------------------------------------
# bookworm explicitly: the binary must link against the runtime stage's glibc.
FROM rust:1.95-bookworm AS builder
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build outputs between builds; the results
# are copied out in the same step because a cache mount is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/plugins/target \
    bash plugins/build.sh \
    && mkdir -p /out/plugins \
    && cp plugins/dist/sync.wasm plugins/dist/async.wasm /out/plugins/
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile production -p vendorhost --locked \
    && cp target/production/vendorhost /out/vendorhost

# ---- runtime ---------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: TLS to real vendors; curl: container health checks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 vendorhost \
    && useradd --system --uid 10001 --gid vendorhost --home-dir /var/lib/vendorhost --create-home vendorhost \
    && mkdir -p /plugins /etc/vendorhost \
    && chown vendorhost:vendorhost /plugins
COPY --from=builder /out/vendorhost /usr/local/bin/vendorhost
# The sample plugins; compose's plugins-init copies them into the shared volume.
COPY --from=builder /out/plugins/ /opt/vendorhost/plugins/
# Relative defaults (.vendorhost/ data and component cache) land in the
# user's writable home; without compose the image serves its own plugins.
WORKDIR /var/lib/vendorhost
ENV VENDORHOST_PLUGINS_DIR=/opt/vendorhost/plugins
USER vendorhost
EXPOSE 8000
ENTRYPOINT ["vendorhost"]
CMD ["serve"]
