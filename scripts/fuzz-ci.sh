#!/usr/bin/env bash
# Bounded fuzzing for CI (issue #7): builds every cargo-fuzz target of fuzz/ once, then runs each
# for FUZZ_SECONDS (default 20) on a scratch copy of its seed corpus (fuzz/seeds/<target> is
# never written to). Exits non-zero if any target crashes, fails an assertion, times out on an
# input or runs out of memory, printing the input's path and the command that reproduces it.
#
#   bash scripts/fuzz-ci.sh                          # CI budget: 7 targets × 20 s, one per core
#   FUZZ_JOBS=1 bash scripts/fuzz-ci.sh              # one target at a time
#   FUZZ_SECONDS=60 bash scripts/fuzz-ci.sh          # longer runs
#   FUZZ_TARGETS="hc1_decode cms_verify" bash scripts/fuzz-ci.sh
#   FUZZ_SANITIZER=address bash scripts/fuzz-ci.sh   # AddressSanitizer build (see fuzz/README.md)
#
# The default build has no sanitizer: the crate forbids unsafe code, the C in its dependencies
# (aws-lc) is not instrumented by a Rust sanitizer build anyway, and on 2 cores the ASan build
# needs a third more CPU time while the targets run 2 to 6 times slower, so a 20 s budget
# tries far fewer inputs (measurements in fuzz/README.md). Panics, failed assertions, stack
# overflows, timeouts and OOMs are caught either way.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fuzz_dir="$root/fuzz"
seconds=${FUZZ_SECONDS:-20}
sanitizer=${FUZZ_SANITIZER:-none}
# Longest a single input may take before it counts as a hang.
input_timeout=${FUZZ_INPUT_TIMEOUT:-10}
# cargo-fuzz needs nightly-only compiler flags; the stable toolchain accepts them with this.
export RUSTC_BOOTSTRAP=1

start=$(date +%s)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-ci: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

cd "$fuzz_dir"
if [[ -n "${FUZZ_TARGETS:-}" ]]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo fuzz list)
fi

# The bounded CI run builds with opt-level 1 instead of release's 3: the build (every dependency
# instrumented for coverage) was most of the stage, and a 20 s run on the seed corpus gains less
# from the faster code than it costs to build (FUZZ_OPT_LEVEL=3 for long campaigns).
export CARGO_PROFILE_RELEASE_OPT_LEVEL=${FUZZ_OPT_LEVEL:-1}
echo "fuzz-ci: building ${#targets[@]} targets (sanitizer: $sanitizer, opt-level: $CARGO_PROFILE_RELEASE_OPT_LEVEL)"
if [[ -n "${FUZZ_TARGETS:-}" ]]; then
    for t in "${targets[@]}"; do
        cargo fuzz build --sanitizer "$sanitizer" "$t"
    done
else
    cargo fuzz build --sanitizer "$sanitizer"
fi
built=$(date +%s)

host=$(rustc -vV | sed -n 's/^host: //p')
target_dir=${CARGO_TARGET_DIR:-$fuzz_dir/target}
[[ "$target_dir" = /* ]] || target_dir="$fuzz_dir/$target_dir"
bin_dir="$target_dir/$host/release"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-ci.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# One target's run: its exit status goes to $scratch/$t.status, its output to $scratch/$t.log.
run_target() {
    local t=$1 corpus="$scratch/corpus/$1" artifacts="$fuzz_dir/artifacts/$1" status=0
    "$bin_dir/$t" "$corpus" \
        -max_total_time="$seconds" -timeout="$input_timeout" -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" >"$scratch/$t.log" 2>&1 || status=$?
    echo "$status" >"$scratch/$t.status"
}

# Each libFuzzer process uses one core: run as many targets at once as there are cores, so the
# stage takes ⌈targets / cores⌉ × FUZZ_SECONDS instead of targets × FUZZ_SECONDS.
jobs=${FUZZ_JOBS:-$(nproc)}
running=0
for t in "${targets[@]}"; do
    corpus="$scratch/corpus/$t"
    mkdir -p "$corpus"
    if [[ -d "seeds/$t" ]]; then
        cp -R "seeds/$t/." "$corpus/"
    fi
    # Crash inputs go where cargo-fuzz puts them (git-ignored), so they outlive the scratch copy.
    mkdir -p "$fuzz_dir/artifacts/$t"
    echo "fuzz-ci: $t for ${seconds}s ($(find "$corpus" -type f | wc -l) seeds)"
    run_target "$t" &
    running=$((running + 1))
    if [[ $running -ge $jobs ]]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

failed=()
reproduce=()
summary=()
for t in "${targets[@]}"; do
    log="$scratch/$t.log"
    corpus="$scratch/corpus/$t"
    status=$(cat "$scratch/$t.status" 2>/dev/null || echo "?")
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2 || true)
    summary+=("$(printf '%-20s %10s execs %8s /s  cov %6s  corpus %5s' "$t" "${execs:-?}" \
        "$(((${execs:-0}) / seconds))" "${cov:-?}" "$(find "$corpus" -type f | wc -l)")")
    if [[ "$status" != 0 ]]; then
        failed+=("$t")
        crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
        echo "fuzz-ci: $t FAILED (exit $status); the end of its log:" >&2
        tail -n 40 "$log" >&2
        if [[ -n "$crash" ]]; then
            reproduce+=("$t: $crash"
                "  cd $fuzz_dir && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer $sanitizer $t $crash")
        else
            reproduce+=("$t: no input was written (see the log above)")
        fi
    fi
done
end=$(date +%s)

echo
echo "fuzz-ci: executions per target (${seconds}s each):"
printf '  %s\n' "${summary[@]}"
echo "fuzz-ci: build $((built - start))s, runs $((end - built))s, total $((end - start))s"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz-ci: FAILED: ${failed[*]}; the inputs, and how to reproduce:" >&2
    printf '  %s\n' "${reproduce[@]}" >&2
    exit 1
fi
echo "fuzz-ci: no crash"
