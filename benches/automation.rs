//! What the automation rules cost per reply: the shipped rule set (11 rules) plus 20 operator
//! rules, shown a non-success reply that matches none of them (the common case: a 4xx/5xx the
//! rules do not watch) and one that fires a shipped rule's window, over 1,000 source × site
//! keys. Successful deliveries never reach the rules (only non-2xx replies are shown).
//!
//! `cargo bench --ignore-rust-version --bench automation`

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::proto::smtp::Reply;
use sluice::shaping::automation::{Automation, AutomationConfig, Key, Rules, Scope};

const KEYS: usize = 1_000;

fn reply(line: &str) -> Reply {
    let mut wire = bytes::BytesMut::from(format!("{line}\r\n").as_str());
    sluice::proto::smtp::client::parse_reply(&mut wire).unwrap().unwrap()
}

fn operator_rules() -> Vec<AutomationConfig> {
    #[derive(serde::Deserialize)]
    struct File {
        automation: Vec<AutomationConfig>,
    }
    let text: String = (0..20)
        .map(|i| {
            format!(
                "[[automation]]\nname = \"op{i}\"\nmx = [\"*.mx{i}.example\"]\n\
                 match = {{ code = '^4\\.7\\.{i}$', text = '(?i)slow down {i}' }}\n\
                 threshold = \"3/5m\"\nreduce = 0.5\n"
            )
        })
        .collect();
    toml::from_str::<File>(&text).unwrap().automation
}

fn bench(c: &mut Criterion) {
    let known = |s: &str| ["google", "microsoft", "yahoo", "apple", "gmx"].contains(&s);
    let rules = Rules::new(&operator_rules(), true, &known).unwrap();
    let mut a = Automation::new(rules);
    let keys: Vec<Key> = (0..KEYS)
        .map(|i| Key { source: Some(format!("ip{}", i % 8).into()), site: format!("site{i}") })
        .collect();
    let miss = reply("451 4.3.0 Temporary System Problem. Try again later - gsmtp");
    let hit = reply(
        "421-4.7.28 [192.0.2.1 15] Our system has detected an unusual rate of\r\n\
         421 4.7.28 unsolicited mail originating from your IP address. - gsmtp",
    );
    fn scope(key: &Key) -> Scope<'_> {
        Scope {
            key,
            named_site: Some("google"),
            mx_host: Some("aspmx.l.google.com"),
            tenant: Some("acme"),
            connections: 10,
            rate: Some(50.0),
            started: 0,
        }
    }
    let mut n = 0usize;
    let mut now = 1_800_000_000_000u64;
    c.bench_function("automation: a reply no rule matches (31 rules)", |b| {
        b.iter(|| {
            n += 1;
            now += 1;
            std::hint::black_box(a.observe(&scope(&keys[n % KEYS]), &[&miss], now))
        })
    });
    c.bench_function("automation: a reply counted in a rule's window (31 rules)", |b| {
        b.iter(|| {
            n += 1;
            now += 1;
            std::hint::black_box(a.observe(&scope(&keys[n % KEYS]), &[&hit], now))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
