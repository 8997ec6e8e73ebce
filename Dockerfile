# syntax=docker/dockerfile:1
# A statically linked binary (glibc with crt-static; rustls, no OpenSSL) on `scratch`, with a CA
# bundle for platform TLS and an /etc/passwd entry for the user 65532 it runs as. Nothing of a
# distribution is shipped. `docker build .` builds it all; the test suite (hack/image.sh) swaps
# the `build` stage for the binary it built, with `--build-context build=DIR`, so that the stage
# below is exactly the one it runs.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY core/Cargo.toml core/Cargo.toml
COPY core/src core/src
COPY sim/Cargo.toml sim/Cargo.toml
COPY sim/src sim/src
COPY src src
# Cargo.toml names the benchmark target: the manifest does not load without its file.
COPY benches benches
COPY hack/image-rootfs.sh hack/image-rootfs.sh
# An explicit --target keeps crt-static off the build scripts and proc macros.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target=$(rustc -vV | sed -n 's/^host: //p') \
    && env "CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_RUSTFLAGS=-C target-feature=+crt-static" \
       cargo build --release --locked --target "$target" -p mxcred-operator --bin mxcred-operator \
    && hack/image-rootfs.sh "target/$target/release/mxcred-operator" \
       /etc/ssl/certs/ca-certificates.crt /rootfs

FROM scratch
COPY --from=build /rootfs/ /
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/mxcred-operator"]
CMD ["run"]
