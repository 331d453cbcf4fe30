#!/bin/sh
# Entrypoint of poold-postgres (docker/base/postgres.Dockerfile): on first start, with no
# database in $PGDATA yet, initdb into $PGDATA.init, create the role POSTGRES_USER (default
# poold, no password) owning the database POSTGRES_DB (default poold), and only then rename it
# to $PGDATA, so a first start that fails half way is simply redone. Then postgres in the
# foreground, listening on every interface of the container; arguments are passed on to it
# (e.g. `-c max_connections=200`).
#
# Client authentication (pg_hba.conf, written on first start): trust from the container's
# own networks ("samenet": on a compose network, the other containers on it) and from inside
# the container; nothing else gets in. Sane only because the port is never published to the
# host or beyond: see docker/compose.cluster.yml.
set -eu

: "${PGDATA:?PGDATA is not set}"
user=${POSTGRES_USER:-poold}
db=${POSTGRES_DB:-poold}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  init=$PGDATA.init
  if [ -e "$PGDATA" ] && ! rmdir "$PGDATA" 2>/dev/null; then
    echo "postgres-entrypoint: $PGDATA is not empty but holds no database; not touching it" >&2
    exit 1
  fi
  echo "postgres-entrypoint: initialising $PGDATA (role $user, database $db)"
  rm -rf "$init"
  initdb --pgdata="$init" --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
    --auth=trust >/dev/null
  cat >"$init/pg_hba.conf" <<HBA
# Written by postgres-entrypoint on first start. No passwords: trust from inside the
# container and from its own networks (samenet); the port must never be published.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  trust
host    all       all   ::1/128       trust
host    all       all   samenet       trust
HBA
  # A server for the set-up alone: on the Unix socket only, so no client sees a database
  # that is not ready yet (the health check asks over TCP).
  pg_ctl --pgdata="$init" --wait --silent -o "-c listen_addresses=''" start >/dev/null
  psql --quiet --no-psqlrc --set ON_ERROR_STOP=1 --username=postgres --dbname=postgres \
    --set user="$user" --set db="$db" <<'SQL'
CREATE ROLE :"user" LOGIN;
CREATE DATABASE :"db" OWNER :"user";
SQL
  pg_ctl --pgdata="$init" --wait --silent --mode=fast stop
  mv "$init" "$PGDATA"
  echo "postgres-entrypoint: initialised"
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
