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
    let recipients: Vec<_> =
        (0..2000).map(|i| json!({"email": format!("r{i}@example.org")})).collect();
    let req = json!({
        "envelope_sender": "news@sender.example",
        "content": "From: news@sender.example\nSubject: weights\n\nbody\n",
        "recipients": recipients,
    });
    let (status, body) = inject(&s, &token, req);
    assert_eq!(status, 200, "{body}");
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
    let with = |rcpt: &str, subject: &str, fields: serde_json::Value| {
        let mut req = one(rcpt, subject);
        req.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        let (status, body) = inject(&s, &token, req);
        assert_eq!(status, 200, "{subject}: {body}");
    };
    with("a@plain.test", "injection", json!({"tenant": "acme", "pool": "p2"}));
    with("b@routed.test", "tenant", json!({"tenant": "acme"}));
    with("c@routed.test", "route", json!({}));
    with("d@plain.test", "default", json!({}));
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
    with("later@plain.test", "kept", json!({"pool": "p2"}));
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
