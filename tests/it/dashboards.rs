//! Every metric a dashboard or an alert rule queries must exist in `/metrics`, so dashboards
//! never go blank and alerts never silently match nothing; the alert rules pass promtool's
//! check and their unit tests (`dashboards/alerts_test.yml`).

use crate::common::*;

/// `promtool check rules` and `promtool test rules` (Debian's `prometheus` package).
#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    if !require_tool("promtool", "apt-get install prometheus") {
        return;
    }
    let dir = repo_root().join("dashboards");
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]] {
        let out = std::process::Command::new("promtool").args(args).current_dir(&dir).output();
        let out = out.unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The `sluice_*` names in a text (an expression, or a rules file without its comments),
/// histogram series reduced to their metric.
fn metric_names(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("sluice_"))
        .map(|name| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name)
                .to_string()
        })
        .collect()
}

#[test]
fn alert_rules_query_only_exported_metrics() {
    let s = Sluice::start("");
    let (_, body) = s.http_get("/metrics");
    let exported = String::from_utf8(body).unwrap();
    let rules = std::fs::read_to_string(repo_root().join("dashboards/alerts.yml")).unwrap();
    let exprs: String = rules.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    let names = metric_names(&exprs);
    assert!(names.len() >= 10, "{names:?}");
    // The gauges the disk and memory alerts compare have their values from the start.
    let value = |name: &str| -> f64 {
        let line = exported.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("sluice_spool_free_bytes") > 0.0);
    assert!(value("sluice_spool_min_free_bytes") > 0.0);
    assert!(value("sluice_memory_budget_bytes") > 0.0);
    for name in names {
        assert!(
            exported.contains(&format!("# TYPE {name} ")),
            "alerts.yml: {name} is not exported"
        );
    }
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let s = Sluice::start("");
    let (_, body) = s.http_get("/metrics");
    let exported = String::from_utf8(body).unwrap();
    for entry in std::fs::read_dir(repo_root().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "json") {
            continue; // the alert rules, checked below
        }
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in dash["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for name in metric_names(expr) {
                    assert!(
                        exported.contains(&format!("# TYPE {name} ")),
                        "{}: {name} is not exported",
                        path.display()
                    );
                }
            }
        }
    }
}
