# One image with both programs: ephemera-controller-manager and ephemera-pmem-csi.
#   DOCKER_BUILDKIT=1 docker build -t ephemera:dev .
# (scripts/images builds it on this machine, without a registry: see docs/install.md.)
# The build stage uses the same Debian packages as scripts/setup; the runtime stage carries only
# the shared libraries and the tools the driver runs (mkfs, mount, lvm, ndctl).
# The build needs BuildKit (RUN --mount keeps a compiler cache between builds) and no `# syntax=`
# line, so that no frontend image is pulled: Docker's built-in Dockerfile frontend reads it.

FROM debian:bookworm AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config \
      nlohmann-json3-dev libyaml-cpp-dev libssl-dev libboost-dev libboost-system-dev \
      libboost-program-options-dev \
      libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc \
      libndctl-dev uuid-dev ccache \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Caps the compile's parallel jobs when given (--build-arg CMAKE_BUILD_PARALLEL_LEVEL=2).
ARG CMAKE_BUILD_PARALLEL_LEVEL
# ccache's directory is a build cache mount: it outlives the layer, so a rebuild after a source
# change recompiles only what changed.
RUN --mount=type=cache,target=/root/.cache/ccache,id=ephemera-ccache \
    export CCACHE_DIR=/root/.cache/ccache CCACHE_MAXSIZE=2G \
    && cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DEPHEMERA_BUILD_TESTS=OFF \
      -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
    && cmake --build /build --target ephemera-controller-manager ephemera-pmem-csi \
    && strip /build/bin/ephemera-controller-manager /build/bin/ephemera-pmem-csi

FROM debian:bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libyaml-cpp0.7 libssl3 libgrpc++1.51 libprotobuf32 libndctl6 libboost-program-options1.74.0 \
      ca-certificates e2fsprogs xfsprogs util-linux mount lvm2 ndctl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /build/bin/ephemera-controller-manager /build/bin/ephemera-pmem-csi /usr/local/bin/
# The controller-manager runs as this user (the Deployment says so too); the driver's DaemonSet
# runs it as root because it formats and mounts.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ephemera-controller-manager"]
