//! Suppression list at 1,000,000 entries: lookup cost (a miss, the common case, and a hit,
//! which is confirmed in the file) and the memory the loaded list costs.
//!
//! `cargo bench --ignore-rust-version --bench suppression`. The list is built once under
//! `target/bench-suppression` (a minute on a small machine) and reused.

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::bounce::Category;
use sluice::bounce::suppression::{NewEntry, Reason, Suppressions};

const ENTRIES: usize = 1_000_000;

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4
}

fn address(i: usize) -> String {
    format!("subscriber{i:07}@example{}.com", i % 97)
}

fn build(path: &std::path::Path) {
    if path.exists() {
        return;
    }
    let list = Suppressions::open(path).expect("open");
    for chunk in (0..ENTRIES).collect::<Vec<_>>().chunks(100_000) {
        let entries: Vec<NewEntry> = chunk
            .iter()
            .map(|&i| NewEntry {
                address: address(i),
                tenant: (i % 2 == 0).then(|| "tenant-a".to_string()),
                reason: Reason::Bounce(Category::InvalidRecipient),
                detail: Some("550 5.1.1 user unknown".into()),
            })
            .collect();
        list.add(&entries).expect("add");
    }
}

fn lookups(c: &mut Criterion) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-suppression");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let path = dir.join("suppression.redb");
    build(&path);
    let before = rss_kib();
    let list = Suppressions::open(&path).expect("open");
    let after = rss_kib();
    assert_eq!(list.len(), ENTRIES);
    eprintln!(
        "suppression: {} entries loaded; RSS +{:.1} MiB (before {:.1} MiB, after {:.1} MiB)",
        list.len(),
        (after.saturating_sub(before)) as f64 / 1024.0,
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    let mut i = 0usize;
    c.bench_function("suppression_check_miss_1m", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            list.check(Some("tenant-a"), &format!("nobody{i}@example.org"))
        })
    });
    let mut j = 0usize;
    c.bench_function("suppression_check_hit_1m", |b| {
        b.iter(|| {
            j = (j + 7919) % ENTRIES;
            // Even entries are tenant-a's, odd ones global: both scopes are hits.
            list.check(Some("tenant-a"), &address(j)).expect("listed")
        })
    });
}

criterion_group!(benches, lookups);
criterion_main!(benches);
