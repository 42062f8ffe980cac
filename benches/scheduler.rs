//! The per-message scheduling decisions of the dispatcher at bulk-sender scale: 10,000 sites
//! (MX host sets), 8 sources in one weighted pool, 100 tenants. Per message: find the domain's
//! site (placement cache), pick the source (smooth weighted round-robin), queue the job on the
//! site's fair ready queue, and take the next job from it.
//!
//! `cargo bench --ignore-rust-version --bench scheduler`

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::delivery::rollup::{Placement, Placements};
use sluice::egress::{Egress, PoolConfig, PoolMember, SourceConfig};
use sluice::queue::ready::Ready;

const SITES: usize = 10_000;
const SOURCES: usize = 8;
const TENANTS: usize = 100;
/// Domains per site (the placement cache holds SITES * this).
const DOMAINS_PER_SITE: usize = 3;

fn egress() -> Egress {
    let sources: Vec<SourceConfig> = (0..SOURCES)
        .map(|i| SourceConfig {
            name: format!("ip{i}"),
            address: Some(format!("127.0.0.{}", i + 2).parse().unwrap()),
            ehlo: None,
            warmup: None,
        })
        .collect();
    let pool = PoolConfig {
        name: "bulk".into(),
        sources: (0..SOURCES)
            .map(|i| PoolMember { name: format!("ip{i}"), weight: i as u32 + 1 })
            .collect(),
    };
    Egress::new(&sources, &[pool], &Default::default(), Some("bulk"), [], []).unwrap()
}

fn bench(c: &mut Criterion) {
    let egress = egress();
    let now = Instant::now();
    let placements = Placements::default();
    let domains: Vec<String> =
        (0..SITES * DOMAINS_PER_SITE).map(|i| format!("customer{i}.example")).collect();
    for (i, d) in domains.iter().enumerate() {
        let key = format!("mx1.host{0}.example,mx2.host{0}.example", i % SITES);
        placements.insert(d.clone(), Placement { key: Some(key), site: None }, now);
    }
    let tenants: Vec<String> = (0..TENANTS).map(|t| format!("tenant{t}")).collect();
    let mut ready: Vec<Ready<u64>> = (0..SITES).map(|_| Ready::new(0.2)).collect();
    // A standing backlog: every site holds work of 10 tenants.
    for (s, r) in ready.iter_mut().enumerate() {
        for k in 0..10 {
            r.push(0, Some(&tenants[(s + k * 7) % TENANTS]), 1, false);
        }
    }
    let mut i = 0usize;
    c.bench_function("schedule one message (10k sites, 8 sources, 100 tenants)", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            let d = &domains[i % domains.len()];
            let p = placements.get(d, now).expect("placed");
            let source = egress.choose("bulk", |_| true).expect("a source");
            let site = i % domains.len() % SITES;
            let r = &mut ready[site];
            r.push(i as u64, Some(&tenants[i % TENANTS]), 1 + (i % 3) as u32, i.is_multiple_of(50));
            let job = r.pop();
            std::hint::black_box((p, source, job))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
