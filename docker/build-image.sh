#!/usr/bin/env bash
# Builds the image mailfabric:latest FROM scratch: the role binaries of target/$PROFILE (stripped of
# debug info) and the shared libraries they need at the paths ldd names (glibc's loader, libc, libm,
# libgcc_s...). Usage: docker/build-image.sh [debug|release] (make docker PROFILE=release).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-${PROFILE:-debug}}
image=${IMAGE:-mailfabric:latest}
bins=(fabric fabric-probe fabric-store fabric-inet-mx fabric-transfer fabric-intranet fabric-sink
      fabric-dns fabric-router fabric-redirector fabric-supervisor fabric-relay)
ctx=target/docker-image
rm -rf "$ctx"
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/data" "$ctx/rootfs/tmp" "$ctx/rootfs/etc"
chmod 1777 "$ctx/rootfs/tmp"
cp docker/Dockerfile "$ctx/"
echo "root:x:0:0:root:/data:/usr/local/bin/fabric-probe" > "$ctx/rootfs/etc/passwd"
declare -A libs=()
for b in "${bins[@]}"; do
    src="target/$profile/$b"
    [ -x "$src" ] || { echo "build-image: $src is missing (cargo build first)" >&2; exit 1; }
    objcopy --strip-debug "$src" "$ctx/rootfs/usr/local/bin/$b"
    # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
    while read -r lib; do libs[$lib]=1; done < <(ldd "$src" | grep -o '/[^ ]*' || true)
done
for lib in "${!libs[@]}"; do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
done
echo "build-image: ${#bins[@]} binaries ($profile), ${#libs[@]} libraries: ${!libs[*]}"
docker build -q -t "$image" "$ctx"
docker image ls "$image"
