#!/usr/bin/env bash
# Regenerates the Swift code for the .proto files under Protos/, and the Go code of the grpc-go
# interop program (GoInterop/, with Debian's protoc-gen-go from golang-goprotobuf-dev).
#
# Builds the two protoc plugins (protoc-gen-swift from swift-protobuf and protoc-gen-grpc-swift-2
# from grpc-swift-protobuf, at pinned versions) into .build-plugins/ when they are missing, then
# runs protoc. Needs `protoc` on PATH (Debian: `apt-get install protobuf-compiler`).
#
# Usage: scripts/generate-protos.sh            (from any directory)
# Environment:
#   PROTOC               protoc binary to use (default: protoc)
#   PLUGIN_BUILD_CONFIG  debug or release (default: debug, which builds faster)

set -euo pipefail

readonly SWIFT_PROTOBUF_VERSION="1.39.0"
readonly GRPC_SWIFT_PROTOBUF_VERSION="2.4.1"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/.." && pwd)"
plugins_dir="${root}/.build-plugins"
src_dir="${plugins_dir}/src"
config="${PLUGIN_BUILD_CONFIG:-debug}"
protoc="${PROTOC:-protoc}"

log() { printf '[generate-protos] %s\n' "$*" >&2; }

# Checks out `url` at `tag` into `dir` (cloning it first if needed).
checkout() {
  local url="$1" tag="$2" dir="$3"
  if [[ ! -d "${dir}/.git" ]]; then
    log "cloning ${url} into ${dir}"
    git clone --quiet "${url}" "${dir}"
  fi
  if [[ "$(git -C "${dir}" describe --tags --exact-match 2>/dev/null || true)" != "${tag}" ]]; then
    git -C "${dir}" fetch --quiet --tags origin || true
    git -C "${dir}" -c advice.detachedHead=false checkout --quiet "${tag}"
  fi
}

# Builds `product` in the package at `dir` unless the binary exists and reports `version`.
# Prints the binary's path.
build_plugin() {
  local dir="$1" product="$2" version="$3"
  local bin="${dir}/.build/${config}/${product}"
  if [[ ! -x "${bin}" ]] || [[ "$("${bin}" --version 2>/dev/null || true)" != *"${version}"* ]]; then
    log "building ${product} ${version} (${config})"
    swift build --package-path "${dir}" -c "${config}" --product "${product}" >&2
  fi
  printf '%s\n' "${bin}"
}

command -v "${protoc}" >/dev/null 2>&1 || {
  log "protoc not found; install it (Debian: apt-get install protobuf-compiler) or set PROTOC"
  exit 1
}

mkdir -p "${src_dir}"
checkout https://github.com/apple/swift-protobuf "${SWIFT_PROTOBUF_VERSION}" \
  "${src_dir}/swift-protobuf"
checkout https://github.com/grpc/grpc-swift-protobuf "${GRPC_SWIFT_PROTOBUF_VERSION}" \
  "${src_dir}/grpc-swift-protobuf"

protoc_gen_swift="$(build_plugin "${src_dir}/swift-protobuf" protoc-gen-swift \
  "${SWIFT_PROTOBUF_VERSION}")"
protoc_gen_grpc_swift="$(build_plugin "${src_dir}/grpc-swift-protobuf" protoc-gen-grpc-swift-2 \
  "${GRPC_SWIFT_PROTOBUF_VERSION}")"

# generate PROTO OUT_DIR VISIBILITY CLIENT SERVER
# Writes <name>.pb.swift (messages) and <name>.grpc.swift (stubs) flat into OUT_DIR. Imports carry
# an access level because the targets use the InternalImportsByDefault upcoming feature.
generate() {
  local proto="$1" out="$2" visibility="$3" client="$4" server="$5"
  local name
  name="$(basename "${proto}" .proto)"
  mkdir -p "${root}/${out}"
  rm -f "${root}/${out}/${name}.pb.swift" "${root}/${out}/${name}.grpc.swift"
  log "${proto} -> ${out}"
  "${protoc}" \
    --proto_path="${root}/Protos" \
    --plugin=protoc-gen-swift="${protoc_gen_swift}" \
    --plugin=protoc-gen-grpc-swift-2="${protoc_gen_grpc_swift}" \
    --swift_out="${root}/${out}" \
    --swift_opt=Visibility="${visibility}" \
    --swift_opt=FileNaming=DropPath \
    --swift_opt=UseAccessLevelOnImports=true \
    --grpc-swift-2_out="${root}/${out}" \
    --grpc-swift-2_opt=Visibility="${visibility}" \
    --grpc-swift-2_opt=Client="${client}" \
    --grpc-swift-2_opt=Server="${server}" \
    --grpc-swift-2_opt=FileNaming=DropPath \
    --grpc-swift-2_opt=UseAccessLevelOnImports=true \
    "${root}/Protos/${proto}"
}

# The etcd client only calls etcd, so no server stubs.
generate etcd/etcd.proto Sources/Etcd/Generated Internal true false
# The registry serves health (registered servers) and calls it (balanced transport).
generate health/health.proto Sources/GRPCRegistry/Generated Internal true true
# The example service is shared by the example server and client executables.
generate user/user.proto Examples/UserService/Generated Public true true
# gRPC's interop test service: InteropCasesTests serves it and calls it.
generate testing/test.proto Tests/GoInteropTests/Generated Internal true true

# The grpc-go interop program (GoInterop/src/grpcinterop, GOPATH mode): Go packages
# grpcinterop/user, grpcinterop/interop and grpcinterop/testing, with the grpc plugin of
# protoc-gen-go 1.3.
generate_go() {
  local proto="$1"
  command -v protoc-gen-go >/dev/null 2>&1 || {
    log "protoc-gen-go not found; install it (Debian: apt-get install golang-goprotobuf-dev)"
    exit 1
  }
  log "${proto} -> GoInterop/src/grpcinterop"
  "${protoc}" \
    --proto_path="${root}/Protos" \
    --go_out="plugins=grpc,paths=source_relative,Muser/user.proto=grpcinterop/user,Minterop/interop.proto=grpcinterop/interop,Mtesting/test.proto=grpcinterop/testing:${root}/GoInterop/src/grpcinterop" \
    "${root}/Protos/${proto}"
}
generate_go user/user.proto
generate_go interop/interop.proto
generate_go testing/test.proto

log "done"
