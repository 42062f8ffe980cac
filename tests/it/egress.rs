//! Egress sources and pools (issue #25): mail leaves from the `[[source]]` addresses (127.0.0.2
//! to 127.0.0.5, all local on loopback) with each source's EHLO name, by weight within a pool,
//! from the pool that its injection, tenant, route or `default_pool` names. The sink records the
//! address each connection came from and the EHLO name it gave.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;

use crate::common::sink::{Behavior, Sink};
use crate::common::*;
use serde_json::json;

/// `[[source]]` s2..s5 on 127.0.0.2..5, EHLO `mtaN.sluice.test`.
fn sources() -> String {
    (2..=5)
        .map(|n| {
            format!(
                "[[source]]\nname = \"s{n}\"\naddress = \"127.0.0.{n}\"\nehlo = \"mta{n}.sluice.test\"\n"
            )
        })
        .collect()
}

fn ip(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

fn inject(s: &Sluice, token: &str, req: serde_json::Value) -> (u16, String) {
    s.agent_post_json("/api/inject/v1", token, &req)
}

/// Injects one message per address, with `fields` (tenant, pool, priority...) added to the
/// request; fails the test unless it is accepted.
fn inject_ok(
    s: &Sluice,
    token: &str,
    addresses: impl IntoIterator<Item = String>,
    fields: serde_json::Value,
) {
    let recipients: Vec<_> = addresses.into_iter().map(|a| json!({"email": a})).collect();
    let mut req = one("", "egress");
    req["recipients"] = json!(recipients);
    req.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    let (status, body) = inject(s, token, req);
    assert_eq!(status, 200, "{body}");
}

fn one(rcpt: &str, subject: &str) -> serde_json::Value {
    json!({
        "envelope_sender": "news@sender.example",
        "content": format!("From: news@sender.example\nSubject: {subject}\n\nbody\n"),
        "recipients": [{"email": rcpt}],
    })
}

/// 2,000 messages from a pool of four sources weighted 1:2:3:4: each source's share is within
/// 10 % of its weight's, every connection from a source gives that source's EHLO name, and the
/// per-source metric and the delivery log say which source sent.
#[test]
fn a_pool_spreads_mail_over_its_sources_by_weight() {
    let sink = Sink::start(Behavior { pipelining: true, ..Behavior::default() });
    let pool = "[[pool]]\nname = \"bulk\"\nsources = [{ name = \"s2\", weight = 1 }, { name = \"s3\", weight = 2 }, { name = \"s4\", weight = 3 }, { name = \"s5\", weight = 4 }]\n";
    let extra = format!(
        "default_pool = \"bulk\"\n{}{}{pool}[inject]\nmax_recipients = 2000\n",
        sink.route(""),
        sources()
    );
    let s = Sluice::start(&extra);
    let token = s.inject_token("bulk");
    inject_ok(&s, &token, (0..2000).map(|i| format!("r{i}@example.org")), json!({}));
    let got = sink.wait_for(2000, 180);
    let mut per_ip: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for m in &got {
        let peer = m.peer.expect("peer address").ip();
        *per_ip.entry(peer).or_default() += 1;
        let n = match peer {
            IpAddr::V4(v4) => v4.octets()[3],
            other => panic!("mail from {other}"),
        };
        assert_eq!(m.ehlo, format!("mta{n}.sluice.test"), "EHLO from {peer}");
    }
    for (n, weight) in [(2u8, 1.0), (3, 2.0), (4, 3.0), (5, 4.0)] {
        let want = 2000.0 * weight / 10.0;
        let have = per_ip.get(&ip(n)).copied().unwrap_or(0) as f64;
        assert!(
            (have - want).abs() <= want * 0.10,
            "127.0.0.{n}: {have} of 2000, want {want}: {per_ip:?}"
        );
    }
    assert_eq!(per_ip.len(), 4, "{per_ip:?}");
    let (_, metrics) = s.http_get("/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    for n in 2..=5u8 {
        let line = format!(
            "sluice_source_deliveries_total{{outcome=\"delivered\",source=\"s{n}\"}} {}",
            per_ip[&ip(n)]
        );
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
    let log = s.delivery_log(4000);
    let delivered = log.iter().filter(|e| e["event"] == "delivered");
    assert!(delivered.clone().count() >= 2000);
    assert!(delivered.clone().all(|e| e["source"].as_str().is_some_and(|x| x.starts_with('s'))));
}

/// The pool, first match wins: the injection's `pool`, the tenant's, the route's, the default;
/// a pool asked for at injection is stored with the message and still used after kill -9; an
/// unknown pool is refused with the field named.
#[test]
fn the_pool_comes_from_injection_then_tenant_then_route_then_default() {
    let mut rcpt = std::collections::HashMap::new();
    rcpt.insert(
        "later@plain.test".to_string(),
        vec!["451 4.3.0 try later".into(), "250 ok".into()],
    );
    let sink = Sink::start(Behavior { rcpt, ..Behavior::default() });
    let pools: String = (2..=5)
        .map(|n| format!("[[pool]]\nname = \"p{n}\"\nsources = [{{ name = \"s{n}\" }}]\n"))
        .collect();
    let extra = format!(
        "default_pool = \"p5\"\n[tenant.acme]\npool = \"p3\"\n\
         [[route]]\ndomains = [\"routed.test\"]\nsmarthost = \"{0}\"\ntls = \"disabled\"\npool = \"p4\"\n\
         [[route]]\ndomains = [\"*\"]\nsmarthost = \"{0}\"\ntls = \"disabled\"\n\
         [queue]\nretry = [\"2s\"]\n[delivery]\nscan_interval = \"200ms\"\n{1}{pools}",
        sink.addr,
        sources()
    );
    let mut s = Sluice::start(&extra);
    let token = s.inject_token("pools");
    let with = |rcpt: &str, fields: serde_json::Value| {
        inject_ok(&s, &token, [rcpt.to_string()], fields);
    };
    with("a@plain.test", json!({"tenant": "acme", "pool": "p2"}));
    with("b@routed.test", json!({"tenant": "acme"}));
    with("c@routed.test", json!({}));
    with("d@plain.test", json!({}));
    let mut c = Client::ehlo(s.smtp);
    let reply = c.send_message_to("<smtp-route@sender.example>", "e@routed.test", "x\r\n");
    assert_eq!(code(&reply), 250, "{reply}");
    let (status, body) = inject(&s, &token, {
        let mut r = one("x@plain.test", "unknown");
        r["pool"] = json!("nope");
        r
    });
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("pool: no [[pool]] is named \"nope\""), "{body}");
    let got = sink.wait_for(5, 60);
    let from = |rcpt: &str| {
        let m = got.iter().find(|m| m.rcpts.iter().any(|r| r == rcpt)).expect(rcpt);
        (m.peer.unwrap().ip(), m.ehlo.clone())
    };
    assert_eq!(from("a@plain.test"), (ip(2), "mta2.sluice.test".into()), "injection field");
    assert_eq!(from("b@routed.test"), (ip(3), "mta3.sluice.test".into()), "tenant before route");
    assert_eq!(from("c@routed.test"), (ip(4), "mta4.sluice.test".into()), "route");
    assert_eq!(from("d@plain.test"), (ip(5), "mta5.sluice.test".into()), "default_pool");
    assert_eq!(from("e@routed.test").0, ip(4), "SMTP mail takes its route's pool too");

    // Stored with the message: deferred once, then kill -9; after the restart the retry still
    // leaves from the injected pool, not the default.
    with("later@plain.test", json!({"pool": "p2"}));
    let q = s.wait_queue(30, |q| {
        q.iter().any(|m| m["recipients"][0]["attempts"].as_u64() >= Some(1) && m["pool"] == "p2")
    });
    assert_eq!(q.len(), 1, "{q:?}");
    s.kill9();
    s.spawn();
    let got = sink.wait_for(6, 60);
    let m = got.iter().find(|m| m.rcpts == ["later@plain.test"]);
    let m = m.unwrap_or_else(|| panic!("not delivered after restart: {got:?}"));
    assert_eq!(m.peer.unwrap().ip(), ip(2), "the stored pool after kill -9");
}

/// A source address this host does not have stops start-up with the source named, before any
/// mail is accepted (rather than every delivery failing later).
#[test]
fn a_source_address_not_on_this_host_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[[listener]]\nmode = \"smtp\"\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [[source]]\nname = \"far\"\naddress = \"192.0.2.10\"\n[[pool]]\nname = \"p\"\nsources = [{{ name = \"far\" }}]\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN).args(["serve", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("binding source \"far\" to 192.0.2.10"), "{err}");
}

/// Sites (MX rollup): twenty domains whose MX records name two Google hosts are one site of the
/// shipped provider table, so `[[site]] name = "google" connections = 2` caps them together (per
/// domain, as before, they could open 20 × 10); ten domains on one unnamed MX host set share one
/// destination (`[shaping.default] connections = 1` holds across all ten), and a message to two
/// of them goes in one transaction. Delivery events name each recipient's domain and the site.
#[test]
fn domains_on_one_providers_exchangers_share_one_set_of_limits() {
    let dns = crate::common::dns::TestDns::start();
    let slow = Behavior {
        end_delay: std::time::Duration::from_millis(20),
        pipelining: true,
        ..Behavior::default()
    };
    let google = Sink::start_on("127.0.0.1:0".parse().unwrap(), slow.clone());
    let port = google.addr.port();
    let rolled = Sink::start_on(format!("127.0.0.3:{port}").parse().unwrap(), slow);
    dns.a("aspmx.l.google.com", "127.0.0.1").a("alt1.aspmx.l.google.com", "127.0.0.1");
    dns.a("mx1.rollup.test", "127.0.0.3").a("mx2.rollup.test", "127.0.0.3");
    for i in 0..20 {
        let d = format!("g{i}.test");
        // Preferences differ between domains: the host set is what counts.
        let (p1, p2) = if i % 2 == 0 { (10, 20) } else { (20, 10) };
        dns.mx(&d, p1, "aspmx.l.google.com").mx(&d, p2, "alt1.aspmx.l.google.com");
    }
    for i in 0..10 {
        let d = format!("r{i}.test");
        let (a, b) = if i % 2 == 0 { ("mx1", "mx2") } else { ("mx2", "MX1") };
        dns.mx(&d, 10, &format!("{a}.rollup.test")).mx(&d, 10, &format!("{b}.rollup.test."));
    }
    let cfg = format!(
        "{}[delivery]\nmx_port = {port}\nscan_interval = \"100ms\"\n\
         [shaping.default]\nconnections = 1\nidle_timeout = \"200ms\"\n\
         [[site]]\nname = \"google\"\nconnections = 2\n",
        dns.config()
    );
    let s = Sluice::start(&cfg);
    let token = s.inject_token("sites");
    let to_google = (0..200).map(|i| format!("u{i}@g{}.test", i % 20));
    let rolled_up = (0..50).map(|i| format!("v{i}@r{}.test", i % 10));
    inject_ok(&s, &token, to_google.chain(rolled_up), json!({}));
    let mut c = Client::ehlo(s.smtp);
    c.cmd("MAIL FROM:<a@example.com>");
    assert_eq!(code(&c.cmd("RCPT TO:<both1@r1.test>")), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<both2@r2.test>")), 250);
    assert_eq!(code(&c.cmd("DATA")), 354);
    assert_eq!(code(&c.cmd("Message-ID: <both@t>\r\n\r\nx\r\n.")), 250);
    google.wait_for(200, 120);
    let got = rolled.wait_for(51, 120);
    assert_eq!(google.max_concurrent(), 2, "the google site's 2 connections, for 20 domains");
    assert_eq!(rolled.max_concurrent(), 1, "one destination for ten domains on one MX set");
    let both = got.iter().find(|m| m.rcpts.len() == 2).expect("one transaction for r1 and r2");
    assert_eq!(both.rcpts, ["both1@r1.test", "both2@r2.test"]);
    // `sluice queue destinations`: two Google MX host sets would be two destinations of one
    // site; here one host set for the 20 domains, and one for the ten rolled up.
    let dests = s.destinations();
    let google_dests: Vec<_> = dests.iter().filter(|d| d["site"] == "google").collect();
    assert_eq!(google_dests.len(), 1, "{dests:?}");
    assert_eq!(google_dests[0]["kind"], "mx_set");
    assert_eq!(google_dests[0]["destination"], "alt1.aspmx.l.google.com,aspmx.l.google.com");
    assert_eq!(google_dests[0]["connection_limit"], 2);
    assert!(dests.iter().any(|d| d["destination"] == "mx1.rollup.test,mx2.rollup.test"));
    let text = s.queue_cmd(&["destinations"]);
    assert!(text.starts_with("destination") && text.contains("google"), "{text}");
    let (_, m) = s.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    assert!(
        m.contains("sluice_site_deliveries_total{outcome=\"delivered\",site=\"google\"} 200"),
        "{m}"
    );
    assert!(
        m.contains("sluice_site_deliveries_total{outcome=\"delivered\",site=\"other\"} 52"),
        "{m}"
    );
    // Every delivered recipient's time in the queue is in the histogram.
    assert!(m.contains("sluice_time_to_outcome_seconds_count{outcome=\"delivered\"} 252"), "{m}");
    let log = s.delivery_log(251 + 251);
    let delivered: Vec<_> = log.iter().filter(|e| e["event"] == "delivered").collect();
    assert_eq!(delivered.len(), 252, "{delivered:?}");
    for e in delivered {
        let rcpt = e["recipient"].as_str().unwrap();
        let domain = rcpt.rsplit_once('@').unwrap().1;
        assert_eq!(e["destination"], domain, "{e}");
        let site =
            if domain.starts_with('g') { "google" } else { "mx1.rollup.test,mx2.rollup.test" };
        assert_eq!(e["site"], site, "{e}");
    }
}

/// IP warm-up: a warming source (127.0.0.2, `schedule = [5]`) sends 5 messages per site today and
/// the rest of its share goes to the pool's warmed source (127.0.0.3); the counts survive a
/// restart (`<data_dir>/warmup.json`). With `overflow = "wait"` and no other source, the mail
/// past the cap stays queued until the next UTC day, with the reason, and no attempt counted.
/// (Day boundaries: `egress::warmup` unit tests, on a simulated clock.)
#[test]
fn a_warming_source_keeps_to_its_daily_cap_per_site() {
    let dns = crate::common::dns::TestDns::start();
    let sink = Sink::start(Behavior { pipelining: true, ..Behavior::default() });
    let port = sink.addr.port();
    dns.a("aspmx.l.google.com", "127.0.0.1").a("mx1.rollup.test", "127.0.0.1");
    for i in 0..5 {
        dns.mx(&format!("g{i}.test"), 10, "aspmx.l.google.com");
        dns.mx(&format!("r{i}.test"), 10, "mx1.rollup.test");
    }
    let cfg = format!(
        "{}[delivery]\nmx_port = {port}\nscan_interval = \"100ms\"\n{}\
         [[source]]\nname = \"s6\"\naddress = \"127.0.0.6\"\nwarmup = \"waiting\"\n\
         [warmup.new]\nschedule = [5, 100]\n[warmup.waiting]\nschedule = [3]\noverflow = \"wait\"\n\
         [[pool]]\nname = \"warm\"\nsources = [{{ name = \"s2\" }}, {{ name = \"s3\" }}]\n\
         [[pool]]\nname = \"wait\"\nsources = [{{ name = \"s6\" }}]\n",
        dns.config(),
        sources().replacen(
            "ehlo = \"mta2.sluice.test\"\n",
            "ehlo = \"mta2.sluice.test\"\nwarmup = \"new\"\n",
            1
        )
    );
    let mut s = Sluice::start(&cfg);
    let token = s.inject_token("warm");
    let send = |s: &Sluice, pool: &str, prefix: &str, n: usize, domains: &[&str]| {
        let to =
            (0..n).map(|i| format!("{prefix}{i}@{}{}.test", domains[i % domains.len()], i % 5));
        inject_ok(s, &token, to, json!({ "pool": pool }));
    };
    let count = |got: &[sink::Received], n: u8, site: char| {
        got.iter()
            .filter(|m| m.peer.unwrap().ip() == ip(n))
            .filter(|m| m.rcpts[0].split('@').nth(1).unwrap().starts_with(site))
            .count()
    };
    send(&s, "warm", "a", 40, &["g", "r"]);
    let got = sink.wait_for(40, 60);
    let warming: Vec<_> = s.destinations().into_iter().filter(|d| d["source"] == "s2").collect();
    assert!(!warming.is_empty());
    assert!(warming.iter().all(|d| d["warmup_day"] == 1 && d["warmup_cap"] == 5), "{warming:?}");
    for site in ['g', 'r'] {
        assert_eq!(count(&got, 2, site), 5, "the warming source's cap at site {site}");
        assert_eq!(count(&got, 3, site), 15, "the rest to the warmed source at {site}");
    }
    // The counters are saved within a second; after kill -9 and a restart the cap still holds.
    let saved = s.data_dir.join("warmup.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let google_count = || {
        let text = std::fs::read_to_string(&saved).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        v["s2"]["sites"]["google"][1].as_u64()
    };
    while google_count() != Some(5) {
        assert!(std::time::Instant::now() < deadline, "warmup.json not written");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    s.kill9();
    s.spawn();
    send(&s, "warm", "b", 10, &["g"]);
    let got = sink.wait_for(50, 60);
    let later: Vec<_> = got.iter().filter(|m| m.rcpts[0].starts_with('b')).collect();
    assert!(later.iter().all(|m| m.peer.unwrap().ip() == ip(3)), "capped after the restart too");

    // overflow = "wait": 3 go today, 2 wait for tomorrow (00:00 UTC), no attempt counted.
    send(&s, "wait", "c", 5, &["g"]);
    let got = sink.wait_for(53, 60);
    assert_eq!(got.iter().filter(|m| m.peer.unwrap().ip() == ip(6)).count(), 3);
    let q = s.wait_queue(30, |q| {
        q.len() == 2 && q.iter().all(|m| !m["recipients"][0]["last_reply"].is_null())
    });
    let tomorrow = {
        let ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
                as u64;
        (ms / 86_400_000 + 1) * 86_400_000
    };
    for m in &q {
        let r = &m["recipients"][0];
        assert_eq!(r["attempts"], 0, "{r}");
        assert!(r["last_reply"].as_str().unwrap().contains("warm-up: source s6"), "{r}");
        let next = chrono_ms(r["next_attempt"].as_str().unwrap());
        assert_eq!(next, tomorrow, "{r}");
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(sink.messages().len(), 53, "nothing more went out today");
}

/// Unix milliseconds of an RFC 3339 UTC time as the queue API prints it (`...T..:..:..sssZ`).
fn chrono_ms(t: &str) -> u64 {
    let out = Command::new("date").args(["-u", "-d", t, "+%s%3N"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

/// Fair queues: tenant A queues 20,000 messages for one destination limited to 2 connections,
/// then tenant B sends 100: B's mail goes out while A's backlog drains (B's p95 time to deliver
/// is printed), and a transactional message overtakes A's bulk backlog.
#[test]
fn a_tenants_backlog_does_not_hold_up_another_tenant_or_transactional_mail() {
    let sink = Sink::start(Behavior { pipelining: true, ..Behavior::default() });
    let cfg = sink.route(
        "[shaping.default]\nconnections = 2\nmessages_per_connection = 100000\n[inject]\nmax_recipients = 20000\n",
    );
    let s = Sluice::start(&cfg);
    let token = s.inject_token("fair");
    let batch = |tenant: &str, prefix: &str, n: usize, extra: serde_json::Value| {
        let mut fields = json!({ "tenant": tenant });
        fields.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        inject_ok(&s, &token, (0..n).map(|i| format!("{prefix}{i}@example.org")), fields);
    };
    let delivered =
        |prefix: &str| sink.messages().iter().filter(|m| m.rcpts[0].starts_with(prefix)).count();
    batch("a", "a", 20_000, json!({}));
    let t0 = std::time::Instant::now();
    batch("b", "b", 100, json!({}));
    let deadline = t0 + std::time::Duration::from_secs(120);
    while delivered("b") < 100 {
        assert!(std::time::Instant::now() < deadline, "b: {} of 100", delivered("b"));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let a_then = delivered("a");
    let mut waits: Vec<u128> = sink
        .messages()
        .iter()
        .filter(|m| m.rcpts[0].starts_with('b'))
        .map(|m| m.at.saturating_duration_since(t0).as_millis())
        .collect();
    waits.sort();
    eprintln!(
        "tenant b: p95 time to deliver {} ms (p50 {} ms) with {a_then} of a's 20000 delivered",
        waits[94], waits[49]
    );
    assert!(a_then < 5_000, "b waited for a's backlog: {a_then} of a's delivered first");

    batch("a", "tx", 1, json!({"priority": "transactional"}));
    let a_at_tx = delivered("a");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while delivered("tx") < 1 {
        assert!(std::time::Instant::now() < deadline, "the transactional message never came");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let overtaken = delivered("a") - a_at_tx;
    assert!(overtaken < 1_000, "{overtaken} bulk messages went before the transactional one");
    assert!(delivered("a") < 20_000, "a's backlog was still there");
}
