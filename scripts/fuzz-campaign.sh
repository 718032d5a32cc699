#!/usr/bin/env bash
# Long fuzzing campaign: runs each cargo-fuzz target for SECONDS (default 3600), one after
# another, at the lowest CPU priority, and keeps the corpus: whatever new coverage a run
# found is merged (minimised, by libFuzzer's -merge=1) into fuzz/corpus/<target>, which the
# normal test suite replays (what it merges has libFuzzer's names, 40 hex digits; the
# seeds made on purpose keep their descriptive names, and the format tests that compare
# with qemu take only those: ferry_test_kit::fuzz_seeds). One line per target goes to fuzz/campaign.log:
#
#   date target seconds execs cov ft corpus_before corpus_after crashes
#
# A crash, timeout or out-of-memory input is left in fuzz/artifacts/<target>/ and the
# script exits 1 at the end, naming it.
#
#   scripts/fuzz-campaign.sh [SECONDS] [TARGET...]     # all targets when none are named
#
# Needs a nightly toolchain and cargo-fuzz (see fuzz/README.md). Not part of CI: the
# corpus replay tests are its short version there.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-3600}
shift || true
cd "$here/fuzz"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz-campaign: needs a nightly toolchain and cargo-fuzz (rustup toolchain install nightly; cargo install cargo-fuzz)" >&2
    exit 2
fi

if [ $# -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
else
    targets=("$@")
fi

nice -n 19 cargo +nightly fuzz build
failed=()
for t in "${targets[@]}"; do
    scratch=$(mktemp -d "/tmp/fuzz-$t.XXXXXX")
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(find "corpus/$t" -type f | wc -l)
    found_before=$(find "artifacts/$t" -type f | wc -l)
    log="$scratch/run.log"
    rc=0
    nice -n 19 cargo +nightly fuzz run "$t" "$scratch" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    line=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(grep -o 'cov: [0-9]*' <<<"$line" | grep -o '[0-9]*' || echo '?')
    ft=$(grep -o 'ft: [0-9]*' <<<"$line" | grep -o '[0-9]*' || echo '?')
    # Keep the corpus: merge only what adds coverage to the checked-in seeds.
    nice -n 19 cargo +nightly fuzz run "$t" "corpus/$t" "$scratch" -- -merge=1 -rss_limit_mb=2048 \
        >"$scratch/merge.log" 2>&1 || true
    after=$(find "corpus/$t" -type f | wc -l)
    crashes=$(($(find "artifacts/$t" -type f | wc -l) - found_before))
    printf '%s %s %ss execs=%s cov=%s ft=%s corpus=%s->%s artifacts=%s rc=%s\n' \
        "$(date -u +%FT%TZ)" "$t" "$secs" "$execs" "$cov" "$ft" "$before" "$after" "$crashes" "$rc" |
        tee -a campaign.log
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        failed+=("$t (see $log and fuzz/artifacts/$t)")
    else
        rm -rf "$scratch"
    fi
done

if [ ${#failed[@]} -ne 0 ]; then
    printf 'fuzz-campaign: findings in %s\n' "${failed[@]}" >&2
    exit 1
fi
