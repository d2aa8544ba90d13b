#!/usr/bin/env bash
# Installs what building and testing hcert-signer needs on a Debian machine (run as root).
# Idempotent: it only installs what is missing, so the demo and the test suite both call it.
set -euo pipefail

need_apt=()
command -v softhsm2-util >/dev/null || need_apt+=(softhsm2)
command -v pkcs11-tool >/dev/null || need_apt+=(opensc)
command -v cc >/dev/null || need_apt+=(build-essential)
command -v curl >/dev/null || need_apt+=(curl ca-certificates)
# systemd-analyze (and systemd-sysusers/-tmpfiles) for scripts/check-systemd.sh, and
# systemd-socket-activate for the socket-activation test.
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# HAProxy for the scale-out test (softhsm-tests/scale_out.rs).
command -v haproxy >/dev/null || need_apt+=(haproxy)
# openssl for the CMS checks and the runbook; python3 with YAML and JSON Schema for
# scripts/check-monitoring.sh (which installs promtool itself, without starting a server).
command -v openssl >/dev/null || need_apt+=(openssl)
python3 -c 'import yaml, jsonschema' 2>/dev/null || need_apt+=(python3 python3-yaml python3-jsonschema)
if ((${#need_apt[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found; install Rust (https://rustup.rs) first" >&2
    exit 1
fi
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
