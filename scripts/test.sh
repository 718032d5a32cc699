#!/usr/bin/env bash
# Run Ferry's whole test suite on a fresh machine: install the peers, check formatting
# and lints, then run every test (unit, property, interop with nbdkit/qemu-nbd, loop
# devices, both I/O engines, the fuzz corpus replay). Prints how many tests skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

skip_log=$(mktemp)
export FERRY_SKIP_LOG="$skip_log"
# setup.sh installed every tool the tests use, so a missing one is an error, not a skip.
export FERRY_REQUIRE_TOOLS=1
trap 'rm -f "$skip_log"' EXIT

# The VDDK bindings are generated offline and committed; fail if they are stale.
if ! dpkg -s libclang-dev >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends libclang-dev >/dev/null
fi
command -v bindgen >/dev/null || cargo install bindgen-cli --locked --version 0.73.2 --quiet
echo "== vddk-sys bindings up to date" >&2
vddk-sys/scripts/bindgen.sh --check

echo "== Containerfile shape" >&2
scripts/check-containerfile.sh

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build the fake libvixDiskLib the VDDK tests load" >&2
cargo build --locked -p fake-vddk -p fake-vcenter
echo "== cargo test" >&2
test_log=$(mktemp)
trap 'rm -f "$skip_log" "$test_log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$test_log"
# The fault campaign's smoke run (benches/kill9.sh runs 1,000 outside CI): kill -9 at
# random points, resume, every target verified by digest.
echo "== kill -9 smoke (benches/kill9.sh 4 512)" >&2
cargo build --locked -p ferry
FERRY=target/debug/ferry benches/kill9.sh 4 512
# Its power-cut smoke (benches/powercut.sh runs 100 outside CI): the target's unflushed
# writes thrown away mid-copy, every journal's watermark and every exit 0 checked on it.
echo "== power-cut smoke (benches/powercut.sh 3 256)" >&2
FERRY=target/debug/ferry benches/powercut.sh 3 256

skipped=$(grep -c . "$skip_log" || true)
if [ "$skipped" -gt 0 ]; then
  echo "== $skipped test(s) SKIPPED for a missing capability (a bug on our machines and CI):" >&2
  sed 's/^/   /' "$skip_log" >&2
else
  echo "== 0 tests skipped" >&2
fi
# One closing line with the totals over every test binary.
awk -v skipped="$skipped" '/^test result:/ { p += $4; f += $6 }
  END { printf "tests: %d passed, %d failed, %d skipped\n", p - skipped, f, skipped }' "$test_log"
