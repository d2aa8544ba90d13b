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
python3 -c 'import yaml, jsonschema, requests' 2>/dev/null || need_apt+=(python3 python3-yaml python3-jsonschema python3-requests)
if ((${#need_apt[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# PostgreSQL's server binaries (initdb, pg_ctl, pg_basebackup) for the PostgreSQL store's tests
# and hcert-load, which start their own throw-away clusters (src/store/postgres/scratch.rs).
# The distribution's own cluster is neither created nor started: nothing should listen on the
# test machine but what the tests start themselves.
pg_server_found() {
    local bindir
    bindir=$(pg_config --bindir 2>/dev/null || true)
    [[ -n $bindir && -x $bindir/initdb ]] && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}
if ! pg_server_found; then
    export DEBIAN_FRONTEND=noninteractive
    mkdir -p /etc/postgresql-common
    [[ -e /etc/postgresql-common/createcluster.conf ]] ||
        echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf
    # invoke-rc.d asks policy-rc.d whether a package may start its service: 101 = no.
    added_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq -o Dpkg::Options::=--force-confold postgresql >/dev/null
    if ((added_policy)); then rm -f /usr/sbin/policy-rc.d; fi
    # Where systemd runs, keep the packaged service from starting at the next boot too.
    if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
        systemctl disable --now postgresql >/dev/null 2>&1 || true
    fi
    pg_server_found || { echo "install-deps: postgresql installed but initdb not found" >&2; exit 1; }
fi

if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found; install Rust (https://rustup.rs) first" >&2
    exit 1
fi
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

# Schemathesis for the contract run (scripts/check-contract.sh, contract/README.md), with every
# package it pulls in pinned (contract/requirements.txt), in a venv of its own: Debian's Python
# refuses pip installs into the system (PEP 668). Only when the venv does not hold exactly that
# list already, so a second call costs one comparison.
venv=${HCERT_VENV:-/opt/hcert-venv}
requirements=$(dirname "${BASH_SOURCE[0]}")/../contract/requirements.txt
if ! cmp -s "$requirements" "$venv/.hcert-requirements.txt"; then
    # Debian ships venv's pip bootstrap (ensurepip) apart, in python3-venv.
    dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q 'ok installed' || {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq python3-venv >/dev/null
    }
    [[ -x $venv/bin/pip ]] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$venv/.hcert-requirements.txt"
fi
