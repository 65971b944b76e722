# oh-host with the bundled plugins, as a container.
#   docker build -t oh-host .
#   docker run -p 3000:3000 -v oh-state:/var/lib/oh-host oh-host
# It serves OpenHands' web client (built from its repository at tag 0.62.0) at /.
# Your own profile: -v ./plugins.toml:/etc/oh-host/plugins.toml (plugins_dir must stay
# /opt/oh-host/plugins, or mount yours there: -v ./plugins:/opt/oh-host/plugins:ro; the host
# refuses libraries that other users may write).

# --- build: the host and the bundled plugin libraries, release profile ---
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The same list as the Makefile's BUNDLED.
ARG BUNDLED="file_stores default_auth log_monitoring saas_monitoring standalone_manager sandbox_runtime openhands_runtime clustered_manager postgres_stores saas_auth billing integrations"
RUN cargo build --release -p oh-host $(for p in $BUNDLED; do printf -- '-p %s ' "$p"; done) \
 && mkdir -p /out/plugins \
 && for p in $BUNDLED; do install -m 0644 "target/release/lib$p.so" /out/plugins/; done \
 && install -m 0755 target/release/oh-host target/release/oh-plugin-runner /out/ \
 && sed -e 's|^bind = .*|bind = "0.0.0.0:3000"|' \
        -e 's|^plugins_dir = .*|plugins_dir = "/opt/oh-host/plugins"|' \
        -e 's|^state_dir = .*|state_dir = "/var/lib/oh-host"|' plugins.toml > /out/plugins.toml

# --- web-client: OpenHands' web client at tag 0.62.0, built as OpenHands builds it ---
FROM node:20-bookworm AS web-client
ARG OPENHANDS_TAG=0.62.0
COPY deploy/web-client.sh /usr/local/bin/web-client.sh
RUN git clone --depth 1 --branch "$OPENHANDS_TAG" https://github.com/All-Hands-AI/OpenHands /build/openhands \
 && web-client.sh /build/openhands/frontend /out/web

# --- run: a slim image, a user of its own ---
FROM debian:bookworm-slim
# bubblewrap and git: the agent's tools (runtime = "bubblewrap": a sandbox per command, a git
# repository per workspace); curl: the healthcheck.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates bubblewrap git curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/oh-host --create-home --shell /usr/sbin/nologin oh
# oh-plugin-runner beside oh-host: entries with isolation = "process" (prlimit, for their
# bounds, is util-linux's, in every Debian).
COPY --from=build /out/oh-host /out/oh-plugin-runner /usr/local/bin/
# Owned by root, 0755/0644: the oh user can read the libraries but not replace them.
COPY --from=build --chown=root:root /out/plugins /opt/oh-host/plugins
COPY --from=build --chown=root:root /out/plugins.toml /etc/oh-host/plugins.toml
# The multi-node profiles (deploy/compose.yaml names the SaaS one); OH_PLUGINS_DIR points
# their plugins_dir here.
COPY --chown=root:root examples/plugins.saas.toml examples/plugins.postgres.toml /etc/oh-host/
COPY --from=web-client --chown=root:root /out/web /opt/oh-host/web
ENV OPENHANDS_PLUGINS_TOML=/etc/oh-host/plugins.toml \
    OH_PLUGINS_DIR=/opt/oh-host/plugins \
    FRONTEND_DIRECTORY=/opt/oh-host/web
USER oh
VOLUME /var/lib/oh-host
EXPOSE 3000
# Probes the server itself (`oh-host check` would load every plugin again, and with the SaaS
# profile migrate and register a cluster node, every 30 s).
HEALTHCHECK --interval=30s --timeout=3s CMD ["curl", "-fsS", "http://127.0.0.1:3000/alive"]
ENTRYPOINT ["oh-host"]
CMD ["serve"]
