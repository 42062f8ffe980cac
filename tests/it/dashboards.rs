//! Every metric a dashboard queries must exist in `/metrics`, so dashboards never go blank.

use crate::common::*;

#[test]
fn dashboard_queries_only_exported_metrics() {
    let s = Sluice::start("");
    let (_, body) = s.http_get("/metrics");
    let exported = String::from_utf8(body).unwrap();
    for entry in std::fs::read_dir(repo_root().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in dash["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for name in expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("sluice_"))
                {
                    let base = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(name);
                    assert!(
                        exported.contains(&format!("# TYPE {base} ")),
                        "{}: {name} is not exported",
                        path.display()
                    );
                }
            }
        }
    }
}
