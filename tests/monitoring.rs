//! `monitoring/`: the Grafana dashboard loads and satisfies its schema, and every metric it and
//! the alert rules query is one the appliance defines (`softhsm-tests/ops.rs` checks the same
//! list against a real scrape).

use std::collections::BTreeSet;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).expect(path)
}

#[test]
fn dashboard_matches_its_schema() {
    let schema: serde_json::Value = serde_json::from_str(&read("monitoring/dashboard.schema.json")).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("monitoring/grafana-dashboard.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let errors: Vec<String> =
        validator.iter_errors(&dashboard).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // A panel without its grid position is refused: the schema has teeth.
    let mut broken = dashboard.clone();
    let panel = broken["panels"].as_array_mut().unwrap().iter_mut().find(|p| p["type"] != "row").unwrap();
    panel.as_object_mut().unwrap().remove("gridPos");
    assert!(!validator.is_valid(&broken));
}

#[test]
fn every_queried_metric_is_defined() {
    let m = hcert_signer::metrics::get();
    let rendered = String::from_utf8(m.render()).unwrap();
    let defined: BTreeSet<String> = m
        .family_names()
        .into_iter()
        .flat_map(|n| [format!("{n}_bucket"), format!("{n}_sum"), format!("{n}_count"), n])
        .chain(
            rendered.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next().map(str::to_owned)),
        )
        .collect();
    let used = read("monitoring/metrics-used.txt");
    let missing: Vec<&str> =
        used.lines().map(str::trim).filter(|n| !n.is_empty() && !defined.contains(*n)).collect();
    assert!(missing.is_empty(), "queried but not defined: {missing:?}");
}
