#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this): formatting, lints, every unit
# and integration test against a fresh SoftHSM2 token, and a short bounded fuzz run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

cargo fmt --all --check
cargo clippy --locked --all-targets --features yubihsm-mock -- -D warnings
# nextest runs every test in its own process, so each SoftHSM test gets its own token and
# SOFTHSM2_CONF without touching its neighbours.
cargo nextest run --locked --all-targets --features yubihsm-mock --no-fail-fast
# Doc tests are not run by nextest.
cargo test --locked --doc --features yubihsm-mock
