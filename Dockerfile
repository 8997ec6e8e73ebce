# syntax=docker/dockerfile:1
# A static binary (musl, rustls: no OpenSSL) on distroless/static: CA bundle included for
# platform TLS, runs as the non-root user 65532. Expected size: about 18 MB (the stripped release
# binary is 16 MB; distroless/static adds about 2 MB).

FROM rust:1.95-alpine AS build
# aws-lc-sys (rustls' crypto provider) builds C code: a compiler, make and perl are enough.
RUN apk add --no-cache build-base perl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY sim/Cargo.toml sim/Cargo.toml
COPY sim/src sim/src
COPY src src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mxcred-operator --bin mxcred-operator \
    && cp target/release/mxcred-operator /mxcred-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /mxcred-operator /mxcred-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/mxcred-operator"]
CMD ["run"]
