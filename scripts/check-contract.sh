#!/usr/bin/env bash
# The document is the contract (issue 20): Schemathesis drives every operation of
# docs/openapi.json, once as the client `issuer` and once as `officer1`, each against a daemon
# of its own made by `hcert-signer dev-init` (a fresh SoftHSM token, store and certificates, so
# nothing leaks from one run into the other), with every check, the stateful phase on, and a
# bounded time. Any failure fails the script. Configuration and hooks: contract/.
#
# Uses the binary the test command's nextest pass has just built: cargo's `test` profile with the
# features that build unifies (yubihsm-mock, test-clock, and test-support from the crate's own
# dev-dependency), so after that pass it compiles nothing (`Fresh`); run alone, it builds it.
# HCERT_CONTRACT_SECONDS bounds each client's API run (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${HCERT_VENV:-/opt/hcert-venv}
st=$venv/bin/schemathesis
[[ -x $st ]] || { echo "check-contract: $st missing; run scripts/install-deps.sh" >&2; exit 1; }
seconds=${HCERT_CONTRACT_SECONDS:-60}

cargo build --locked --profile test --features yubihsm-mock,test-clock,test-support --bin hcert-signer
target=${CARGO_TARGET_DIR:-target}
[[ $target == /* ]] || target=$root/$target
bin=$target/debug/hcert-signer

work=$(mktemp -d /tmp/hcert-contract.XXXXXX)
daemon=
stop_daemon() {
    if [[ -n $daemon ]]; then
        kill -TERM "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
        daemon=
    fi
}
trap 'stop_daemon; rm -rf "$work"' EXIT

# One run: a fresh dev-init and daemon, Schemathesis as `client`, the daemon stopped after.
run() {
    local client=$1 dir=$work/$1
    "$bin" dev-init --dir "$dir" >/dev/null
    "$bin" serve --config "$dir/config.toml" 2>"$dir/daemon.log" &
    daemon=$!
    local listen ops
    listen=$(sed -n 's/^listen = "\(.*\)"$/\1/p' "$dir/config.toml")
    ops=$(sed -n 's/^metrics_listen = "\(.*\)"$/\1/p' "$dir/config.toml")
    for _ in $(seq 150); do curl -sf "http://$ops/readyz" >/dev/null && break; sleep 0.2; done
    curl -sf "http://$ops/readyz" >/dev/null || { echo "check-contract: the daemon did not become ready:"; cat "$dir/daemon.log"; exit 1; }
    echo "check-contract: Schemathesis as $client (API https://$listen, operations http://$ops, ${seconds}s at most)"
    local start=$SECONDS status=0
    # Schemathesis takes one base URL a run: the API listener's routes with the client's
    # certificate, then the operations listener's (health, readiness, metrics: the paths that
    # name it as their server), which need none.
    (
        cd "$root/contract"
        export HCERT_CONTRACT_CA=$dir/tls/ca.pem HCERT_CONTRACT_CERT=$dir/tls/$client.pem \
            HCERT_CONTRACT_KEY=$dir/tls/$client.key
        "$st" --config-file schemathesis.toml run "$root/docs/openapi.json" --url "https://localhost:${listen##*:}" \
            --exclude-path-regex "$ops_paths" --checks all --phases examples,coverage,fuzzing,stateful \
            --max-time "$seconds" --report junit --report-junit-path "$work/$client.junit.xml" &&
        # Three operations with no state: their bounded examples suffice, no time budget.
        "$st" --config-file schemathesis.toml run "$root/docs/openapi.json" --url "http://$ops" \
            --include-path-regex "$ops_paths" --checks all --phases examples,coverage,fuzzing \
            --report junit --report-junit-path "$work/$client.ops.junit.xml"
    ) || status=$?
    echo "check-contract: $client run took $((SECONDS - start)) s, exit $status"
    stop_daemon
    if ((status != 0)); then
        echo "check-contract: the daemon's log (last 40 lines):"; tail -n 40 "$dir/daemon.log"
        return "$status"
    fi
}

ops_paths='^/(healthz|readyz|metrics)$'
failed=0
run issuer || failed=1
run officer1 || failed=1
exit "$failed"
