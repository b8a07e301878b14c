# syntax=docker/dockerfile:1
# Build: the same command `make` runs, in a stage that has protoc and the well-known .proto files
# (google/protobuf/*.proto, from libprotobuf-dev): etcd-client compiles its protobufs at build time.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin etcd-bridge

# Run: no shell, no package manager, a non-root user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/etcd-bridge /usr/local/bin/etcd-bridge
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/etcd-bridge"]
CMD ["run"]
