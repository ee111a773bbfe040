# syntax=docker/dockerfile:1
# chime-gateway: a release build, then a minimal runtime image (no shell, non-root).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin chime-gateway --bin chime-emulator

# distroless "cc": glibc and CA certificates only; the :nonroot tag runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/chime-gateway /usr/local/bin/chime-gateway
COPY --from=build /src/target/release/chime-emulator /usr/local/bin/chime-emulator
USER 65532:65532
# The documented defaults (loopback: only containers of the same pod reach it); override with
# CHIME_GATEWAY_LISTEN / CHIME_GATEWAY_METRICS_LISTEN, e.g. 0.0.0.0:50051 for kubelet gRPC probes.
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/chime-gateway"]
