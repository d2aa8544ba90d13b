#!/usr/bin/env bash
# Checks monitoring/ (issue #6): the Prometheus rules compile and pass their unit tests, the
# Grafana dashboard matches its JSON Schema and is laid out sanely, every PromQL expression
# queries only metrics of the daemon's contract, and monitoring/metrics-used.txt lists exactly the
# metric names the dashboard and the rules query (an integration test asserts that each appears
# in a real scrape).
#
#   bash scripts/check-monitoring.sh                         # check everything; exit 1 on any failure
#   bash scripts/check-monitoring.sh --update-metrics-used   # rewrite monitoring/metrics-used.txt, then check
#
# Installs promtool (Debian's `prometheus` package) when it is missing, without starting the
# Prometheus server the package ships. Run as root on Debian, like scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

update=0
case "${1:-}" in
    "") ;;
    --update-metrics-used) update=1 ;;
    *) echo "usage: $0 [--update-metrics-used]" >&2; exit 2 ;;
esac

failures=0
fail() { echo "check-monitoring: FAIL: $*" >&2; failures=$((failures + 1)); }
note() { echo "check-monitoring: $*"; }

work=$(mktemp -d "${TMPDIR:-/tmp}/check-monitoring.XXXXXX")
policy_created=0
cleanup() {
    rm -rf "$work"
    if ((policy_created)); then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT

# ------------------------------------------------------------------ promtool
install_promtool() {
    note "promtool not found: installing Debian's prometheus package (its server is not started)"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d exit 101 forbids maintainer scripts to start services (invoke-rc.d and
    # deb-systemd-invoke honour it), so no Prometheus server comes up. Docker images ship one;
    # create it only if there is none, and remove ours afterwards.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_created=1
    fi
    local was_running=0
    if [[ -d /run/systemd/system ]] && systemctl is-active --quiet prometheus 2>/dev/null; then was_running=1; fi
    # A failing postinst (a service that cannot start in a container) must not stop us: the
    # binary is unpacked either way, and whether promtool runs is checked below.
    if ! apt-get install -y -qq --no-install-recommends prometheus >"$work/apt.log" 2>&1; then
        apt-get update -qq >>"$work/apt.log" 2>&1 || true
        apt-get install -y -qq --no-install-recommends prometheus >>"$work/apt.log" 2>&1 || true
    fi
    # Only promtool is wanted: never leave a server running or enabled that this script caused.
    if [[ -d /run/systemd/system ]] && ((!was_running)); then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    if ! command -v promtool >/dev/null; then
        tail -n 20 "$work/apt.log" >&2
        echo "check-monitoring: could not install promtool" >&2
        exit 1
    fi
}
command -v promtool >/dev/null || install_promtool
note "$(promtool --version 2>&1 | head -n 1)"

# ------------------------------------------------------------------ python helpers
PY=python3
if ! "$PY" -c 'import yaml' 2>/dev/null; then
    note "PyYAML missing: installing it"
    "$PY" -m pip install --quiet pyyaml >/dev/null 2>&1 ||
        { apt-get install -y -qq python3-yaml >/dev/null 2>&1 && PY=/usr/bin/python3; } || true
    "$PY" -c 'import yaml' 2>/dev/null || { echo "check-monitoring: PyYAML is needed" >&2; exit 1; }
fi

cat >"$work/monitoring.py" <<'PYEOF'
"""Helpers of scripts/check-monitoring.sh: PromQL metric extraction, dashboard layout checks,
JSON Schema validation. Usage: monitoring.py metrics | layout | schema | promql."""
import glob, json, re, sys

import yaml

DASHBOARD = "monitoring/grafana-dashboard.json"
SCHEMA = "monitoring/dashboard.schema.json"

# The daemon's metrics contract (src/metrics.rs and the prometheus crate's Linux process
# collector). Histograms are queried through their _bucket/_sum/_count series only.
COUNTERS = """hcert_signatures_total hcert_records_rejected_total hcert_batches_total
hcert_key_rotations_total hcert_tls_handshake_failures_total hcert_hsm_faults_total
hcert_hsm_reinits_total hcert_hsm_bad_signatures_total hcert_hsm_timeouts_total
hcert_http_requests_total hcert_audit_entries_total hcert_connections_refused_total""".split()
GAUGES = """hcert_queue_records hcert_queue_oldest_age_seconds hcert_hsm_up hcert_hsm_sessions
hcert_dsc_not_after_timestamp_seconds hcert_dsc_usage_end_timestamp_seconds hcert_dsc_active
hcert_ready hcert_audit_last_checkpoint_timestamp_seconds hcert_store_corrupt_records
hcert_start_time_seconds""".split()
HISTOGRAMS = "hcert_hsm_sign_duration_seconds hcert_record_latency_seconds".split()
PROCESS = """process_resident_memory_bytes process_cpu_seconds_total process_open_fds
process_max_fds process_start_time_seconds process_virtual_memory_bytes process_threads""".split()
CONTRACT = set(COUNTERS + GAUGES + PROCESS + [h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")])

TOKEN = re.compile(r"""
    (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<braces>\{[^}]*\})
  | (?P<brackets>\[[^\]]*\])
  | (?P<num>\d[\w.]*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<var>\$\{?\w+\}?)
  | (?P<ws>\s+)
  | (?P<other>.)
""", re.X)
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "atan2", "start", "end"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                "bottomk", "topk", "quantile"}


def selectors(expr):
    """(metric name, label matchers or None) for every series selector in a PromQL expression."""
    toks = [(m.lastgroup, m.group()) for m in TOKEN.finditer(expr) if m.lastgroup != "ws"]
    out, i = [], 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else (None, None)
        if kind == "ident" and text in GROUPING and nxt[1] == "(":
            depth, i = 0, i + 1
            while i < len(toks):
                depth += {"(": 1, ")": -1}.get(toks[i][1], 0)
                if depth == 0:
                    break
                i += 1
        elif kind == "ident" and nxt[1] != "(" and text not in GROUPING | KEYWORDS | AGGREGATIONS:
            out.append((text, nxt[1] if nxt[0] == "braces" else None))
        elif kind == "braces":
            if re.search(r"__name__", text):
                sys.exit(f"unsupported: a selector by __name__ in {expr!r}")
        i += 1
    return out


def rule_files():
    return sorted(f for f in glob.glob("monitoring/*.yml") if not f.endswith("_test.yml"))


def rule_exprs():
    """(where, expr, is_recording_definition) for every rule."""
    for f in rule_files():
        for g in yaml.safe_load(open(f))["groups"]:
            for r in g["rules"]:
                yield f"{f}: {r.get('alert') or r.get('record')}", r["expr"], r.get("record")


def dashboard_exprs(d):
    for p in d["panels"]:
        for t in p.get("targets", []):
            yield f"{DASHBOARD}: panel {p['id']} ({p['title']}) {t['refId']}", t["expr"]
    for v in d["templating"]["list"]:
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v["type"] == "query":
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", q)
            if not m:
                sys.exit(f"{DASHBOARD}: variable {v['name']}: only label_values(selector, label) is supported")
            yield f"{DASHBOARD}: variable {v['name']}", m.group(1)


def cmd_metrics():
    """Print the metric names queried (one a line, sorted); check them against the contract."""
    d = json.load(open(DASHBOARD))
    recorded = {rec for _, _, rec in rule_exprs() if rec}
    names, bad = set(), []
    for where, expr, _ in rule_exprs():
        for name, _m in selectors(expr):
            if ":" in name:
                if name not in recorded:
                    bad.append(f"{where}: {name} is recorded by no rule")
            else:
                names.add(name)
    for where, expr in dashboard_exprs(d):
        for name, matchers in selectors(expr):
            if ":" in name:
                bad.append(f"{where}: {name}: the dashboard must not depend on recording rules")
                continue
            names.add(name)
            if "panel" in where and not (matchers and 'instance=~"$instance"' in matchers):
                bad.append(f'{where}: {name} lacks {{instance=~"$instance"}}')
    for n in sorted(names - CONTRACT):
        bad.append(f"{n} is not in the metrics contract" + (" (query a histogram through _bucket/_sum/_count)" if n in HISTOGRAMS else ""))
    for b in bad:
        print(b, file=sys.stderr)
    print("\n".join(sorted(names)))
    return 1 if bad else 0


def cmd_layout():
    """What JSON Schema cannot say: unique ids and refIds, the 24-column grid, no overlaps."""
    d = json.load(open(DASHBOARD))
    bad, ids, cells = [], set(), {}
    for p in d["panels"]:
        g = p["gridPos"]
        if p["id"] in ids:
            bad.append(f"panel id {p['id']} used twice")
        ids.add(p["id"])
        if g["x"] + g["w"] > 24:
            bad.append(f"panel {p['id']} ({p['title']}) ends past column 24")
        refs = [t["refId"] for t in p.get("targets", [])]
        if len(refs) != len(set(refs)):
            bad.append(f"panel {p['id']} ({p['title']}) repeats a refId")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    bad.append(f"panel {p['id']} ({p['title']}) overlaps panel {cells[(x, y)]}")
                    break
                cells[(x, y)] = p["id"]
            else:
                continue
            break
    names = [v["name"] for v in d["templating"]["list"]]
    for need in ("datasource", "instance"):
        if need not in names:
            bad.append(f"template variable {need} missing")
    for b in bad:
        print(f"{DASHBOARD}: {b}", file=sys.stderr)
    print(f"{len(d['panels'])} panels ({sum(p['type'] == 'row' for p in d['panels'])} rows), "
          f"{sum(len(p.get('targets', [])) for p in d['panels'])} queries")
    return 1 if bad else 0


def cmd_schema():
    """Validate the dashboard; prove the schema rejects malformed panels. Exit 3: no jsonschema."""
    try:
        import jsonschema
    except ImportError:
        return 3
    schema, d = json.load(open(SCHEMA)), json.load(open(DASHBOARD))
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    errors = sorted(v.iter_errors(d), key=lambda e: list(e.absolute_path))
    for e in errors:
        print(f"{DASHBOARD}: {e.json_path}: {e.message}", file=sys.stderr)
    # The schema must catch what it exists to catch.
    first = next(i for i, p in enumerate(d["panels"]) if p["type"] != "row")
    mutations = {
        "gridPos with an unknown key": lambda x: x["panels"][first]["gridPos"].update(z=1),
        "gridPos without h": lambda x: x["panels"][first]["gridPos"].pop("h"),
        "panel wider than the grid": lambda x: x["panels"][first]["gridPos"].update(w=25),
        "target without refId": lambda x: x["panels"][first]["targets"][0].pop("refId"),
        "target with a misspelt key": lambda x: x["panels"][first]["targets"][0].update(exprr="up"),
        "panel without targets": lambda x: x["panels"][first].pop("targets"),
        "panel with a misspelt key": lambda x: x["panels"][first].update(gridpos={}),
        "row holding panels while expanded": lambda x: x["panels"][0]["panels"].append({}),
        "wrong schemaVersion": lambda x: x.update(schemaVersion=38),
        "no datasource variable": lambda x: x["templating"].update(list=[]),
    }
    for what, mutate in mutations.items():
        m = json.loads(json.dumps(d))
        mutate(m)
        if v.is_valid(m):
            errors.append(what)
            print(f"{SCHEMA}: accepts a dashboard with a {what}", file=sys.stderr)
    print(f"valid; rejects all {len(mutations)} malformed variants")
    return 1 if errors else 0


def cmd_promql():
    """The dashboard's queries as a rules file (Grafana's variables replaced), for promtool to parse."""
    d = json.load(open(DASHBOARD))
    subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h", "$instance": ".*"}
    rules = []
    for i, (where, expr) in enumerate(dashboard_exprs(d)):
        for k, v in subst.items():
            expr = expr.replace(k, v)
        if "$" in expr:
            print(f"{where}: unknown variable in {expr!r}", file=sys.stderr)
            return 1
        rules.append({"record": f"dashboard:query:{i}", "expr": expr})
    print(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=1))
    return 0


sys.exit({"metrics": cmd_metrics, "layout": cmd_layout, "schema": cmd_schema,
          "promql": cmd_promql}[sys.argv[1]]())
PYEOF

# ------------------------------------------------------------------ rules
mapfile -t rule_files < <(ls monitoring/*.yml | grep -v '_test\.yml$')
note "promtool check rules ${rule_files[*]}"
promtool check rules "${rule_files[@]}" || fail "promtool check rules"
note "promtool test rules monitoring/alerts_test.yml"
promtool test rules monitoring/alerts_test.yml || fail "promtool test rules"

# ------------------------------------------------------------------ dashboard
note "dashboard layout"
"$PY" "$work/monitoring.py" layout || fail "dashboard layout"
note "dashboard PromQL parses (promtool, Grafana variables substituted)"
if "$PY" "$work/monitoring.py" promql >"$work/dashboard-queries.yml"; then
    promtool check rules "$work/dashboard-queries.yml" >"$work/promql.log" 2>&1 ||
        { cat "$work/promql.log" >&2; fail "dashboard PromQL"; }
    note "$(grep -c 'record:\|"record"' "$work/dashboard-queries.yml") queries parse"
else
    fail "dashboard PromQL"
fi
note "dashboard JSON Schema (draft 2020-12)"
rc=0
"$PY" "$work/monitoring.py" schema || rc=$?
case $rc in
    0) ;;
    3) note "SKIPPED: the python3 module jsonschema is not importable (pip install jsonschema)" ;;
    *) fail "dashboard JSON Schema" ;;
esac

# ------------------------------------------------------------------ metrics used
note "metrics queried by the dashboard and the rules"
if "$PY" "$work/monitoring.py" metrics >"$work/metrics-used.txt"; then
    if ((update)); then
        cp "$work/metrics-used.txt" monitoring/metrics-used.txt
        note "wrote monitoring/metrics-used.txt ($(wc -l <monitoring/metrics-used.txt) names)"
    elif ! diff -u monitoring/metrics-used.txt "$work/metrics-used.txt"; then
        fail "monitoring/metrics-used.txt is stale: run $0 --update-metrics-used"
    else
        note "monitoring/metrics-used.txt matches ($(wc -l <"$work/metrics-used.txt") names)"
    fi
else
    fail "metric extraction"
fi

if ((failures)); then
    echo "check-monitoring: $failures check(s) failed" >&2
    exit 1
fi
note "all checks passed"
