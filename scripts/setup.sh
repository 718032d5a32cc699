#!/usr/bin/env bash
# Install what Ferry's example, tests and benchmarks need on a fresh Debian machine:
# the real NBD peers (nbdkit, nbdcopy/nbdinfo, qemu-img/qemu-nbd/qemu-io), fio, and the
# proxy and TLS peers (tinyproxy, socat, openssl), container registry peers
# (docker-registry, skopeo), govmomi's vCenter simulator, and kubectl.
# Idempotent: does nothing when everything is already there.
set -euo pipefail

need=()
command -v nbdkit >/dev/null || need+=(nbdkit)
command -v nbdcopy >/dev/null || need+=(libnbd-bin)
command -v qemu-nbd >/dev/null || need+=(qemu-utils)
command -v fio >/dev/null || need+=(fio)
command -v losetup >/dev/null || need+=(mount)
command -v python3 >/dev/null || need+=(python3)
# The compressors whose output the stream tests decompress.
command -v gzip >/dev/null || need+=(gzip)
command -v xz >/dev/null || need+=(xz-utils)
command -v zstd >/dev/null || need+=(zstd)
command -v bzip2 >/dev/null || need+=(bzip2)
command -v mkfifo >/dev/null || need+=(coreutils)
# VMware-style streamOptimized VMDKs (grain directory at the end, with a footer) for the
# image tests: qemu-img writes only its own layout.
# Debian's module, for Debian's python (`python3` on PATH may be another one).
/usr/bin/python3 -c 'import VMDKstream' 2>/dev/null || need+=(python3-vmdkstream)
# Independent TLS and proxy peers for the vSphere client's tests: tinyproxy (CONNECT),
# socat's OpenSSL listener (an https:// proxy in front of it), openssl s_server.
command -v tinyproxy >/dev/null || need+=(tinyproxy)
command -v socat >/dev/null || need+=(socat)
command -v openssl >/dev/null || need+=(openssl)
# GnuTLS's certtool makes the x509 certificates of the NBD-over-TLS tests (as nbdkit's
# own tests make them).
command -v certtool >/dev/null || need+=(gnutls-bin)
# nginx serves files (whole and ranged GETs, HTTP and HTTPS) to ferry-http's tests.
command -v nginx >/dev/null || need+=(nginx-light)
# Container registry peers for the registry source's tests (importer/tests/support/
# registry.rs): distribution 2.8 as a registry, skopeo to push the test images,
# htpasswd (bcrypt) for basic auth, curl for the checks from outside; the token server
# is tests/registry/token_server.py (python3 and openssl, above).
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v curl >/dev/null || need+=(curl)
# govmomi's vCenter simulator, an independent vCenter: tests/vcsim/main.go is built
# against Debian's govmomi source (GOPATH mode, offline) by the tests that use it.
command -v go >/dev/null || need+=(golang-go)
[ -d /usr/share/gocode/src/github.com/vmware/govmomi/simulator ] || need+=(golang-github-vmware-govmomi-dev)
# kubectl runs the README's controller lifecycle against the test API server
# (controller/tests/kubectl.rs); Debian's 1.20 and a current one both pass.
command -v kubectl >/dev/null || need+=(kubernetes-client)

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The official Kubernetes schemas (two minor versions) the controller's manifests and
# import pods are validated against (controller/tests/manifests.rs).
command -v kubernetes-validate >/dev/null || python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is missing; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
