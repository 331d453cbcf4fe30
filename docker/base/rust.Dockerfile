# The Rust build stage's base image (`poold-rust:<version>`), built locally by
# docker/base-images.sh because no image registry is reachable: Debian bookworm plus gcc (for
# crates that build C) and the host's Rust toolchain, copied in from the build context.
# Anywhere an official `rust:1.95-bookworm` image can be pulled, that image works instead:
# `docker build --build-arg RUST_IMAGE=rust:1.95-bookworm ...`.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# Extra trust anchors the host has (e.g. a TLS-intercepting egress proxy), so cargo in the
# build reaches the crate registry from wherever the host does. The directory may be empty.
COPY ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates

COPY toolchain/ /usr/local/rust/
ENV PATH=/usr/local/rust/bin:$PATH \
    CARGO_HOME=/usr/local/cargo \
    CARGO_HTTP_CAINFO=/etc/ssl/certs/ca-certificates.crt
RUN rustc --version && cargo --version
