# PostgreSQL from Debian's own packages, for docker/compose.cluster.yml: built locally by
# docker/base-images.sh (as `poold-postgres:<major>`, on the debian:bookworm-slim it makes)
# because no image registry is reachable. Build context: docker/base.
#
# The data directory is $PGDATA, a subdirectory of the volume /var/lib/postgresql/data; an
# empty one is initialised on first start by postgres-entrypoint.sh (a role and a database,
# both `poold` unless POSTGRES_USER / POSTGRES_DB say otherwise). Runs as Debian's `postgres`
# user (uid 999), postgres itself is PID 1; `docker stop` sends SIGINT (a fast shutdown: SIGTERM's
# smart shutdown would wait for every client, e.g. poold's pooled connections, to leave).
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
ARG PG_MAJOR=15

# The `postgres` user first, with a fixed uid/gid (999, as in the official image), so a volume
# stays readable by a rebuilt image. Then postgresql-common, told not to create Debian's
# `main` cluster (the entrypoint makes its own data directory on the volume), then the server.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 postgres \
    && useradd --system --no-log-init --uid 999 --gid postgres --home-dir /var/lib/postgresql \
        --no-create-home --shell /bin/bash postgres \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-common \
    && sed -ri 's/^#?\s*create_main_cluster\b.*$/create_main_cluster = false/' \
        /etc/postgresql-common/createcluster.conf \
    && apt-get install -y --no-install-recommends "postgresql-${PG_MAJOR}" \
    && rm -rf /var/lib/apt/lists/* \
    && test ! -e "/var/lib/postgresql/${PG_MAJOR}/main" \
    && mkdir -p /var/lib/postgresql/data /run/postgresql \
    && chown postgres:postgres /var/lib/postgresql/data /run/postgresql \
    && chmod 700 /var/lib/postgresql/data

COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:$PATH \
    PGDATA=/var/lib/postgresql/data/pgdata
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
USER 999:999
WORKDIR /var/lib/postgresql
STOPSIGNAL SIGINT
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["pg_isready", "--quiet", "--host", "127.0.0.1", "--port", "5432"]
ENTRYPOINT ["postgres-entrypoint"]
