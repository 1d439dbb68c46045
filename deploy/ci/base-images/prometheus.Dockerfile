# Local stand-in for prom/prometheus:v2.42.0, from Debian bookworm's prometheus 2.42.0, with the official layout:
# binary /bin/prometheus (/bin is /usr/bin in bookworm), config /etc/prometheus/prometheus.yml, data /prometheus, user nobody, port 9090.
FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus /etc/prometheus \
    && chown -R nobody:nogroup /prometheus /etc/prometheus
COPY prometheus.yml /etc/prometheus/prometheus.yml
USER nobody
EXPOSE 9090
VOLUME /prometheus
WORKDIR /prometheus
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
