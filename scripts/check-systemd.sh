#!/usr/bin/env bash
# Checks the systemd files in systemd/ (scripts/test.sh runs it; it takes a second or two):
#   * `systemd-analyze verify` on every unit prints nothing at all (no error, no warning);
#   * `systemd-analyze security --offline=true` exposure: hcert-signer.service ≤ 1.0,
#     hcert-signer-activated.service ≤ 0.5 (lower is better; the scores are printed);
#   * the activated unit has not drifted from the main one (only the network settings differ),
#     and the socket units hand over the descriptor names the daemon looks for;
#   * hcert-signer.sysusers and hcert-signer.tmpfiles apply cleanly to a scratch root (as root).
# Nothing is installed or written outside a temporary directory. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v systemd-analyze >/dev/null; then
    echo "check-systemd: systemd-analyze not found (Debian: apt-get install systemd)" >&2
    exit 1
fi
export SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat SYSTEMD_LOG_COLOR=0

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
fail() {
    echo "check-systemd: FAIL: $*" >&2
    failed=1
}

main=hcert-signer.service
activated=hcert-signer-activated.service
shopt -s nullglob
units=(systemd/*.service systemd/*.socket)
[[ -f systemd/$main && -f systemd/$activated && -f systemd/hcert-signer.socket ]] \
    || fail "systemd/ must hold $main, $activated and hcert-signer.socket"

# 1. verify. It insists that ExecStart='s binary exists and is executable, and CI has not
# installed /usr/bin/hcert-signer: verify copies (same names, so the units' references to each
# other resolve) in which the daemon's path is /bin/true. Everything else is checked as shipped.
mkdir "$tmp/units"
for u in "${units[@]}"; do
    sed -E 's#^(Exec[A-Za-z]+=[-@:+!]*)/usr/bin/hcert-signer( |$)#\1/bin/true\2#' "$u" >"$tmp/units/${u##*/}"
done
if out=$(systemd-analyze verify --man=no --generators=no "$tmp"/units/* 2>&1) && [[ -z $out ]]; then
    echo "check-systemd: verify: ${#units[@]} units clean (${units[*]##*/})"
else
    fail "systemd-analyze verify ${units[*]##*/}:"
    printf '%s\n' "${out:-(no output, non-zero exit)}" >&2
fi

# 2. Sandbox exposure (systemd prints it in tenths, rounded up).
check_exposure() { # unit, max in tenths
    local unit=$1 max=$2 out score
    out=$(systemd-analyze security --offline=true --no-pager "$tmp/units/$unit" 2>&1) || true
    score=$(sed -nE 's/.*Overall exposure level for [^:]*: ([0-9]+\.[0-9]).*/\1/p' <<<"$out")
    if [[ -z $score ]]; then
        fail "no exposure level for $unit:"
        printf '%s\n' "$out" >&2
        return
    fi
    local tenths=$((10#${score/./}))
    if ((tenths <= max)); then
        echo "check-systemd: exposure $unit: $score (max $((max / 10)).$((max % 10)))"
    else
        fail "exposure $unit: $score, above $((max / 10)).$((max % 10)); what is exposed:"
        grep '✗' <<<"$out" >&2 || true
    fi
}
check_exposure "$main" 10
check_exposure "$activated" 5

# 3. The activated unit is the main one without network: same [Service] settings but these.
service_settings() {
    awk '/^\[/ { s = ($0 == "[Service]") } s && /^[A-Za-z]/' "$1" \
        | grep -Ev '^(PrivateNetwork|RestrictAddressFamilies|IPAddressAllow|IPAddressDeny)='
}
if ! drift=$(diff <(service_settings "systemd/$main") <(service_settings "systemd/$activated")); then
    fail "$activated differs from $main beyond the network settings (< main, > activated):"
    printf '%s\n' "$drift" >&2
fi
# The daemon takes its listeners by LISTEN_FDNAMES: "api" and "metrics".
for pair in hcert-signer.socket:api hcert-signer-metrics.socket:metrics; do
    sock=systemd/${pair%%:*}
    [[ -f $sock ]] || { fail "$sock is missing"; continue; }
    grep -qx "FileDescriptorName=${pair#*:}" "$sock" || fail "$sock: FileDescriptorName=${pair#*:} expected"
    grep -qx "Service=$activated" "$sock" || fail "$sock: Service=$activated expected"
done

# 4. sysusers first (it creates the user and group), then tmpfiles, in a scratch root.
if [[ $EUID -eq 0 ]] && command -v systemd-sysusers >/dev/null && command -v systemd-tmpfiles >/dev/null; then
    mkdir -p "$tmp/root/etc"
    before=$failed
    for step in "systemd-sysusers:systemd/hcert-signer.sysusers" "systemd-tmpfiles --create:systemd/hcert-signer.tmpfiles"; do
        file=${step#*:}
        [[ -f $file ]] || continue
        # shellcheck disable=SC2086 # the command and its option split on purpose
        if ! out=$(${step%%:*} --root="$tmp/root" - <"$file" 2>&1) || grep -v '^Creating ' <<<"$out" | grep -q .; then
            fail "${step%%:*} $file:"
            printf '%s\n' "$out" >&2
        fi
    done
    [[ -d $tmp/root/etc/hcert-signer ]] || fail "hcert-signer.tmpfiles did not create /etc/hcert-signer"
    ((failed != before)) || echo "check-systemd: sysusers and tmpfiles apply cleanly"
else
    echo "check-systemd: sysusers/tmpfiles check skipped (needs root and systemd-sysusers/systemd-tmpfiles)"
fi

if ((failed)); then
    echo "check-systemd: FAILED" >&2
    exit 1
fi
echo "check-systemd: OK"
