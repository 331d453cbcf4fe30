#!/usr/bin/env bash
# Builds, locally, the base images docker/Dockerfile and docker/compose.cluster.yml name, for
# machines that cannot pull from an image registry:
#   debian:bookworm-slim   a minimal Debian bookworm root file system made by debootstrap
#                          (needs root) and `docker import`ed under the official image's tag;
#   poold-rust:<major.minor>  that plus gcc and the host's Rust toolchain (docker/base/rust.Dockerfile);
#   poold-postgres:15      that plus Debian's PostgreSQL server, for the cluster compose file
#                          (docker/base/postgres.Dockerfile).
# An image that already exists under its tag is kept, so only the first run pays; FORCE=1
# rebuilds them all. Where a registry is reachable, pull `debian:bookworm-slim` and use
# `--build-arg RUST_IMAGE=rust:1.95-bookworm` instead of running this (the PostgreSQL image
# still comes from here, or from `docker build -f docker/base/postgres.Dockerfile docker/base`).
#
# Environment: DEBIAN_MIRROR (debootstrap's default mirror if unset), FORCE=1.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_IMAGE=debian:bookworm-slim
FORCE=${FORCE:-0}

rust_version=$(rustc --version | awk '{print $2}')        # e.g. 1.95.0
RUST_IMAGE=${RUST_IMAGE:-poold-rust:${rust_version%.*}}  # e.g. poold-rust:1.95
PG_MAJOR=15                                              # what Debian bookworm packages
POSTGRES_IMAGE=poold-postgres:$PG_MAJOR

have_image() { [[ $FORCE != 1 ]] && docker image inspect "$1" >/dev/null 2>&1; }

work=$(mktemp -d "${TMPDIR:-/var/tmp}/poold-base.XXXXXX")
trap 'rm -rf "$work"' EXIT

build_debian() {
  if have_image "$DEBIAN_IMAGE"; then
    echo "base-images: $DEBIAN_IMAGE exists"
    return
  fi
  [[ $(id -u) == 0 ]] || { echo "base-images: debootstrap needs root" >&2; exit 1; }
  if ! command -v debootstrap >/dev/null; then
    echo "base-images: installing debootstrap from Debian's packages"
    { apt-get install -y --no-install-recommends debootstrap \
      || { apt-get update && apt-get install -y --no-install-recommends debootstrap; }; } >"$work/apt.log" 2>&1 \
      || { tail -20 "$work/apt.log" >&2; exit 1; }
  fi
  echo "base-images: debootstrap bookworm (minbase) ..."
  local rootfs=$work/rootfs
  # shellcheck disable=SC2086 # the mirror is optional: debootstrap picks its default without it
  debootstrap --variant=minbase bookworm "$rootfs" ${DEBIAN_MIRROR:-} >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }

  # Make it like the official slim image: updates and security suites, no docs, man pages or
  # locales (now or in later installs), no apt caches.
  local main_line
  main_line=$(head -1 "$rootfs/etc/apt/sources.list")  # "deb <mirror>/debian bookworm main"
  # shellcheck disable=SC2001 # sed: slashes in ${var/pattern/replacement} read badly
  {
    echo "$main_line"
    sed 's| bookworm | bookworm-updates |' <<<"$main_line"
    sed 's|/debian bookworm |/debian-security bookworm-security |' <<<"$main_line"
  } >"$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
  rm -rf "$rootfs"/usr/share/{man,groff,info,lintian,locale}/* \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/tmp/*
  tar --numeric-owner -C "$rootfs" -c . | docker import -c 'CMD ["bash"]' - "$DEBIAN_IMAGE" >/dev/null
  echo "base-images: imported $DEBIAN_IMAGE"
}

build_rust() {
  if have_image "$RUST_IMAGE"; then
    echo "base-images: $RUST_IMAGE exists"
    return
  fi
  local sysroot host context=$work/rust
  sysroot=$(rustc --print sysroot)
  host=$(rustc -vV | sed -n 's/^host: //p')
  echo "base-images: $RUST_IMAGE from the host's rustc $rust_version ($host) ..."
  mkdir -p "$context/toolchain/bin" "$context/toolchain/lib/rustlib" "$context/ca-certificates"
  # Only what builds: cargo, rustc, their shared libraries and the host's std. No docs,
  # sources, clippy or rustfmt. Hard links when on the same file system, else copies.
  local copy=(cp -al)
  cp -al "$sysroot/bin/rustc" "$work/.probe" 2>/dev/null || copy=(cp -a)
  rm -f "$work/.probe"
  "${copy[@]}" "$sysroot/bin/cargo" "$sysroot/bin/rustc" "$context/toolchain/bin/"
  "${copy[@]}" "$sysroot"/lib/*.so* "$context/toolchain/lib/"
  "${copy[@]}" "$sysroot/lib/rustlib/$host" "$context/toolchain/lib/rustlib/"
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$context/ca-certificates/"
  fi
  docker build -q --force-rm -f docker/base/rust.Dockerfile --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
    -t "$RUST_IMAGE" "$context" >/dev/null
  echo "base-images: built $RUST_IMAGE"
}

build_postgres() {
  if have_image "$POSTGRES_IMAGE"; then
    echo "base-images: $POSTGRES_IMAGE exists"
    return
  fi
  echo "base-images: $POSTGRES_IMAGE from Debian's postgresql-$PG_MAJOR ..."
  docker build -q --force-rm -f docker/base/postgres.Dockerfile --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
    --build-arg PG_MAJOR="$PG_MAJOR" -t "$POSTGRES_IMAGE" docker/base >/dev/null
  echo "base-images: built $POSTGRES_IMAGE"
}

build_debian
build_rust
build_postgres
