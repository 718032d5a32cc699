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

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test" >&2
test_log=$(mktemp)
trap 'rm -f "$skip_log" "$test_log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$test_log"

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
