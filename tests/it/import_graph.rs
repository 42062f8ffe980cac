//! The library's modules import each other without cycles (DESIGN.md, "Where new features
//! live"): each file's `crate::` and `super::` paths (outside comments) are edges of a graph
//! over the files of `src/` (the binary's `main.rs` and `cli/` excepted), and the graph must
//! have no cycle. A module and its own submodules are one unit: `a` using `a::b` is not an
//! edge. Between top-level modules the rule is stricter: they sit in layers, imports go to
//! the same layer or below and never form a cycle (no two modules import each other), and
//! configuration is composed at the top: feature modules own their `*Config` sections and
//! only `server` (and the binary) import `config`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn module_name(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> =
        rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `crate::a::{b, c::d}` becomes `crate::a::b crate::a::c::d` (one level of braces).
fn flatten_groups(text: &str) -> String {
    let group = regex::Regex::new(r"\b(crate|super)::((?:\w+::)*)\{([^{}]*)\}").unwrap();
    group
        .replace_all(text, |c: &regex::Captures| {
            c[3].split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(|x| format!("{}::{}{}", &c[1], &c[2], x))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .into_owned()
}

fn related(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
}

/// The graph: module -> the modules its non-test code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    files(&src, &mut paths);
    let mut texts = BTreeMap::new();
    let test_module = regex::Regex::new(r"#\[cfg\(test\)\]\n(?:pub(?:\(crate\))? )?mod ").unwrap();
    for p in paths {
        let name = module_name(&p, &src);
        // Unit tests (`tests.rs` files, and test modules at the end of a file, such as a
        // shared test harness) may reach anywhere; only the code they test counts.
        if name == "main" || name == "cli" || name.starts_with("cli::") || name.ends_with("tests") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let end = test_module.find(&text).map_or(text.len(), |m| m.start());
        // Comments name modules without importing them (doc links).
        let code: String = text[..end]
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(|l| format!("{l}\n"))
            .collect();
        texts.insert(name, flatten_groups(&code));
    }
    let names: BTreeSet<String> = texts.keys().cloned().collect();
    let path = regex::Regex::new(r"\b(crate|super)::((?:\w+::)*\w+)").unwrap();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in &texts {
        let here: Vec<&str> = if m.is_empty() { vec![] } else { m.split("::").collect() };
        let targets = edges.entry(m.clone()).or_default();
        for c in path.captures_iter(text) {
            let mut parts: Vec<String> = match &c[1] {
                "crate" => Vec::new(),
                _ => here[..here.len().saturating_sub(1)].iter().map(|s| s.to_string()).collect(),
            };
            parts.extend(c[2].split("::").map(str::to_string));
            // The longest prefix that is a module of ours.
            let target = (1..=parts.len())
                .rev()
                .map(|k| parts[..k].join("::"))
                .find(|cand| names.contains(cand));
            if let Some(t) = target
                && !related(m, &t)
            {
                targets.insert(t);
            }
        }
    }
    // A module holds its submodules: whoever depends on `a` depends on `a::b` too, so a path
    // from `a::b` back to `a` is a cycle.
    for m in &names {
        if let Some((parent, _)) = m.rsplit_once("::")
            && names.contains(parent)
        {
            edges.entry(parent.to_string()).or_default().insert(m.clone());
        }
    }
    edges
}

/// A cycle through `start`, if there is one (depth-first search).
fn cycle_from(
    edges: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    let last = path.last().unwrap().clone();
    for next in edges.get(&last).into_iter().flatten() {
        if next == start {
            let mut c = path.clone();
            c.push(start.to_string());
            return Some(c);
        }
        if seen.insert(next.clone()) {
            path.push(next.clone());
            if let Some(c) = cycle_from(edges, start, path, seen) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn library_modules_import_each_other_without_cycles() {
    let edges = graph();
    // The graph must be the real one: these edges exist, so a parser that found none would
    // fail here rather than pass vacuously.
    assert!(edges["smtp::conn"].contains("smtp::admission"), "{:?}", edges["smtp::conn"]);
    assert!(edges["delivery::dispatch"].contains("dns"), "{:?}", edges["delivery::dispatch"]);
    for m in edges.keys() {
        let mut seen = BTreeSet::new();
        if let Some(c) = cycle_from(&edges, m, &mut vec![m.clone()], &mut seen) {
            panic!("import cycle: {}", c.join(" -> "));
        }
    }
}

/// The top-level modules by layer, lowest first. A new module must be placed here.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundations",
        &[
            "domain",
            "domain_labels",
            "proto",
            "rate",
            "secret_file",
            "state_file",
            "stream",
            "tls",
            "units",
            "metrics",
            "delivery_error",
            "test_rng",
        ],
    ),
    ("storage and lookups", &["dns", "spool", "delivery_log", "net"]),
    ("policies", &["mailauth", "tenant", "auth", "bounce", "local", "egress", "shaping"]),
    (
        "paths",
        &[
            "intake",
            "queue",
            "delivery",
            "inject",
            "smtp",
            "mailbox_listener",
            "imap",
            "pop3",
            "admin",
        ],
    ),
    ("composition", &["config", "server"]),
];

/// The graph between top-level modules (`a::b` counts as `a`).
fn top_level(edges: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let top = |m: &str| m.split("::").next().unwrap_or_default().to_string();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in edges {
        if from.is_empty() {
            continue;
        }
        let entry = out.entry(top(from)).or_default();
        for to in tos {
            if top(to) != top(from) && !to.is_empty() {
                entry.insert(top(to));
            }
        }
    }
    out
}

#[test]
fn top_level_modules_are_layered_and_config_is_composed_at_the_top() {
    let edges = top_level(&graph());
    let layer_of = |m: &str| {
        LAYERS.iter().position(|(_, ms)| ms.contains(&m)).unwrap_or_else(|| {
            panic!("module {m} is in no layer of tests/it/import_graph.rs: place it")
        })
    };
    // The real graph: a parser that found no edges would fail here.
    assert!(edges["smtp"].contains("intake"), "{:?}", edges["smtp"]);
    assert!(edges["server"].contains("config"), "{:?}", edges["server"]);
    let mut wrong = Vec::new();
    for (from, tos) in &edges {
        for to in tos {
            if layer_of(to) > layer_of(from) {
                wrong.push(format!(
                    "{from} ({}) imports {to} ({})",
                    LAYERS[layer_of(from)].0,
                    LAYERS[layer_of(to)].0
                ));
            }
            if to == "config" && from != "server" {
                wrong.push(format!("{from} imports config: own the section type instead"));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    for m in edges.keys() {
        let mut seen = BTreeSet::new();
        if let Some(c) = cycle_from(&edges, m, &mut vec![m.clone()], &mut seen) {
            panic!("top-level import cycle: {}", c.join(" -> "));
        }
    }
}
