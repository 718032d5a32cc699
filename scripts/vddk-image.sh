#!/usr/bin/env bash
# Build the VDDK init image from VMware's tarball (VMware-vix-disklib-*.x86_64.tar.gz):
#
#   scripts/vddk-image.sh TARBALL --tag REGISTRY/vddk:8 [--push] [--runtime podman|docker]
#   scripts/vddk-image.sh TARBALL --layout-only DIR
#
# The tarball is unpacked with tar (symbolic links kept), the distribution checked with
# `ferry inspect --vddk-libdir` (library versions, links, dependencies through the
# dynamic loader, the symbols Ferry calls; a failure stops here), then built with
# Containerfile.vddk. `--layout-only DIR` builds no image: it lays the distribution out
# in DIR exactly as the image's entrypoint does in the pod's /opt
# (`cp -r /vmware-vix-disklib-distrib DIR`), for a check or a host-mounted libdir.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
tarball=$1; shift
tag= push=0 runtime= layout=
while [ $# -gt 0 ]; do
    case $1 in
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --push) push=1; shift ;;
    --runtime) runtime=${2:?--runtime needs podman or docker}; shift 2 ;;
    --layout-only) layout=${2:?--layout-only needs a directory}; shift 2 ;;
    *) usage ;;
    esac
done
[ -f "$tarball" ] || { echo "vddk-image: no tarball at $tarball" >&2; exit 2; }
[ -n "$tag" ] || [ -n "$layout" ] || { echo "vddk-image: give --tag (to build) or --layout-only DIR" >&2; exit 2; }
ferry=${FERRY:-}
if [ -z "$ferry" ]; then
    for f in "$here/target/release/ferry" "$here/target/debug/ferry" "$(command -v ferry || true)"; do
        if [ -n "$f" ] && [ -x "$f" ]; then ferry=$f; break; fi
    done
fi
[ -n "$ferry" ] || { echo "vddk-image: no ferry binary to check the distribution (cargo build -p ferry, or FERRY=path)" >&2; exit 2; }

build=$(mktemp -d "${TMPDIR:-/tmp}/vddk-image.XXXXXX")
trap 'rm -rf "$build"' EXIT
tar -xzf "$tarball" -C "$build"
# As kubectl mtv finds it: the first directory whose name starts so.
distrib=$(find "$build" -mindepth 1 -maxdepth 1 -type d -name 'vmware-vix-disklib-distrib*' | head -1)
[ -n "$distrib" ] || { echo "vddk-image: $tarball holds no vmware-vix-disklib-distrib directory" >&2; exit 1; }
[ "$(basename "$distrib")" = vmware-vix-disklib-distrib ] || mv "$distrib" "$build/vmware-vix-disklib-distrib"
distrib=$build/vmware-vix-disklib-distrib
"$ferry" inspect --vddk-libdir "$distrib"

if [ -n "$layout" ]; then
    mkdir -p "$layout"
    cp -r "$distrib" "$layout"
    "$ferry" inspect --vddk-libdir "$layout/vmware-vix-disklib-distrib" >/dev/null
    echo "vddk-image: laid out in $layout/vmware-vix-disklib-distrib"
    exit 0
fi
if [ -z "$runtime" ]; then
    if command -v podman >/dev/null; then runtime=podman
    elif command -v docker >/dev/null; then runtime=docker
    else echo "vddk-image: neither podman nor docker is installed (or use --layout-only DIR)" >&2; exit 2
    fi
fi
cp "$here/Containerfile.vddk" "$build/Containerfile"
"$runtime" build -t "$tag" -f "$build/Containerfile" "$build"
if [ "$push" = 1 ]; then "$runtime" push "$tag"; fi
echo "vddk-image: built $tag"
