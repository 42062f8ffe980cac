//! Adaptive shaping (issue #26): `[[automation]]` rules act on the replies of a scripted sink
//! that answers like a throttling provider. Suspension holds new connections of the source ×
//! site until it ends; a reduction lowers the rate below the provider's limit and recovery gives
//! it back in steps; `bounce_tenant` bounces one tenant's mail only. (Windows, steps and clocks
//! are unit-tested on simulated time in `shaping::automation`.)

use std::sync::Arc;

use crate::common::sink::{Behavior, RcptSeen, Sink, unix_ms};
use crate::common::*;
use serde_json::json;

fn inject_many(s: &Sluice, token: &str, tenant: &str, prefix: &str, n: usize) {
    let recipients: Vec<_> =
        (0..n).map(|i| json!({ "email": format!("{prefix}{i}@example.org") })).collect();
    let req = json!({
        "envelope_sender": "news@sender.example",
        "content": "From: news@sender.example\nSubject: shaping\n\nbody\n",
        "recipients": recipients,
        "tenant": tenant,
    });
    let (status, body) = s.agent_post_json("/api/inject/v1", token, &req);
    assert_eq!(status, 200, "{body}");
}

/// Three "blocked" replies within the window suspend the source × site for 4 s: the connection
/// ends before its next message, the queued mail waits unattempted (a `deferred` event naming
/// the rule), no connection is opened until the suspension ends, `queue destinations` shows it,
/// and afterwards everything is delivered.
#[test]
fn a_suspension_holds_new_connections_until_it_ends() {
    let script: crate::common::sink::Script = Arc::new(|r: &RcptSeen<'_>| {
        (r.n <= 3).then(|| "450 4.7.1 blocked for testing (S3150)".to_string())
    });
    let sink = Sink::start(Behavior { script: Some(script), ..Behavior::default() });
    let cfg = sink.route(
        "builtin_automation = false\n\
         [shaping.default]\nconnections = 1\nmessages_per_connection = 1000\n\
         [[automation]]\nname = \"test-block\"\nmatch = { text = 'S3150' }\n\
         threshold = \"3/1m\"\nsuspend = \"4s\"\n",
    );
    let s = Sluice::start(&cfg);
    let token = s.inject_token("shaping");
    inject_many(&s, &token, "acme", "r", 10);
    let log = s.wait_event(30, |e| e["event"] == "shaping_action" && e["action"] == "suspend");
    let suspend = events(&log, "shaping_action").next().unwrap().clone();
    assert_eq!(suspend["rule"], "test-block");
    assert_eq!(suspend["site"], sink.addr.to_string(), "a smart host is its own site");
    assert!(suspend["reply"].as_str().unwrap().contains("S3150"), "{suspend}");
    let until = suspend["until"].as_u64().unwrap();
    let dests = s.destinations();
    let d = dests.iter().find(|d| d["destination"] == sink.addr.to_string()).unwrap();
    if unix_ms() + 500 < until {
        assert_eq!(d["state"], "suspended", "{d}");
        assert_eq!(d["shaping_rule"], "test-block", "{d}");
        let text = s.queue_cmd(&["destinations"]);
        assert!(text.contains("suspended"), "{text}");
    }
    sink.wait_for(10, 60);
    let log = s.wait_log(30, |log| {
        events(log, "delivered").count() == 10
            && events(log, "shaping_action").any(|e| e["action"] == "resume")
    });
    let connected = sink.connected_ms();
    assert!(connected.len() >= 2, "{connected:?}");
    for &c in &connected[1..] {
        assert!(c >= until, "a connection {} ms into the suspension", until - c);
    }
    // The three deferred by the sink and the seven withdrawn from the ready queue: all waited.
    let held: Vec<_> = events(&log, "deferred")
        .filter(|e| e["reply"].as_str().unwrap_or("").contains("automation rule test-block"))
        .collect();
    assert!(held.len() >= 7, "{held:?}");
    assert_eq!(events(&log, "delivered").count(), 10);
    let (_, m) = s.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    for action in ["suspend", "resume"] {
        let line =
            format!("sluice_shaping_actions_total{{action=\"{action}\",rule=\"test-block\"}} 1");
        assert!(m.contains(&line), "{line} in {m}");
    }
}

/// A provider that accepts 25 messages per second and answers `450 4.7.28` past that, against
/// a configured 40/s: the rule halves the rate, each second without a match gives back a
/// quarter of the 40/s, never more, and the sink sees no more than the lowered rate meanwhile.
#[test]
fn a_reduction_slows_below_the_providers_limit_and_recovers_in_steps() {
    let per_second =
        Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<u64, usize>::new()));
    let counts = per_second.clone();
    let script: crate::common::sink::Script = Arc::new(move |_: &RcptSeen<'_>| {
        let mut c = counts.lock().unwrap();
        let n = c.entry(unix_ms() / 1000).or_default();
        *n += 1;
        (*n > 25).then(|| "450 4.7.28 our system has detected an unusual rate".to_string())
    });
    let sink =
        Sink::start(Behavior { script: Some(script), pipelining: true, ..Behavior::default() });
    let cfg = sink.route(
        "builtin_automation = false\n\
         [shaping.default]\nconnections = 2\nmessages_per_connection = 100000\nrate = \"40/s\"\n\
         [[automation]]\nname = \"rate\"\nmatch = { code = '^4\\.7\\.28$' }\n\
         threshold = \"3/10s\"\nreduce = 0.5\nrecover_every = \"1s\"\nrecover_step = 0.25\n\
         [inject]\nmax_recipients = 1000\n",
    );
    let s = Sluice::start(&cfg);
    let token = s.inject_token("shaping");
    inject_many(&s, &token, "acme", "r", 300);
    let log = s.wait_event(60, |e| {
        e["event"] == "shaping_action" && e["action"] == "recover" && e.get("rate").is_none()
    });
    let actions: Vec<&serde_json::Value> = events(&log, "shaping_action").collect();
    eprintln!(
        "actions: {:?}",
        actions.iter().map(|e| (e["action"].clone(), e["rate"].clone())).collect::<Vec<_>>()
    );
    eprintln!("accepted + refused per second at the sink: {:?}", per_second.lock().unwrap());
    let mut rate = 40.0;
    for e in &actions {
        let after = e["rate"].as_f64().unwrap_or(40.0);
        match e["action"].as_str().unwrap() {
            "reduce" => assert!((after - rate / 2.0).abs() < 1e-6, "{e}: from {rate}"),
            "recover" => {
                assert!(after - rate <= 10.0 + 1e-6, "{e}: a step above 10/s from {rate}");
                assert!(after > rate, "{e}: no step from {rate}");
            }
            other => panic!("unexpected action {other}: {e}"),
        }
        rate = after;
    }
    assert!(actions.iter().filter(|e| e["action"] == "recover").count() >= 2, "{actions:?}");
    // While each action's rate held, no whole second at the sink saw more than that rate,
    // give or take the message in flight on each of the two connections.
    let counts = per_second.lock().unwrap().clone();
    for pair in actions.windows(2) {
        let (from, to) = (pair[0]["time"].as_u64().unwrap(), pair[1]["time"].as_u64().unwrap());
        let cap = pair[0]["rate"].as_f64().unwrap_or(40.0);
        for sec in from / 1000 + 1..to / 1000 {
            let n = counts.get(&sec).copied().unwrap_or(0);
            assert!(n as f64 <= cap + 2.0, "second {sec}: {n} messages at a lowered {cap}/s");
        }
    }
}

/// `bounce_tenant`: the first `[TS03]` reply to one of acme's messages bounces acme's mail
/// queued for the site (the provider's reply in the failure), while zeta's mail to the same
/// site is delivered.
#[test]
fn bounce_tenant_bounces_that_tenants_mail_for_the_site_only() {
    let acme_tries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tries = acme_tries.clone();
    let script: crate::common::sink::Script = Arc::new(move |r: &RcptSeen<'_>| {
        r.rcpt.starts_with("acme").then(|| {
            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            "421 4.7.1 [TS03] All messages from 127.0.0.1 will be permanently deferred".to_string()
        })
    });
    let sink = Sink::start(Behavior { script: Some(script), ..Behavior::default() });
    let cfg = sink.route(
        "builtin_automation = false\n\
         [shaping.default]\nconnections = 1\nmessages_per_connection = 1000\n\
         [[automation]]\nname = \"ts03\"\nmatch = { text = '\\[TS03\\]' }\n\
         threshold = \"1/1m\"\nbounce_tenant = true\n",
    );
    let s = Sluice::start(&cfg);
    let token = s.inject_token("shaping");
    inject_many(&s, &token, "acme", "acme", 20);
    inject_many(&s, &token, "zeta", "zeta", 20);
    let done = |log: &[serde_json::Value], prefix: &str, event: &str| {
        log.iter()
            .filter(|e| e["event"] == event)
            .filter(|e| e["recipient"].as_str().is_some_and(|r| r.starts_with(prefix)))
            .count()
    };
    let log = s.wait_log(60, |log| {
        done(log, "acme", "failed") == 20 && done(log, "zeta", "delivered") == 20
    });
    assert_eq!(done(&log, "acme", "delivered"), 0);
    assert_eq!(done(&log, "zeta", "failed"), 0);
    let action = events(&log, "shaping_action").next().unwrap();
    assert_eq!(
        (action["action"].as_str(), action["tenant"].as_str()),
        (Some("bounce_tenant"), Some("acme"))
    );
    let failed = events(&log, "failed").find(|e| e["recipient"] == "acme5@example.org").unwrap();
    let reply = failed["reply"].as_str().unwrap();
    assert!(reply.starts_with("550 5.7.1") && reply.contains("[TS03]"), "{reply}");
    // The sink was offered acme's mail once (a job already planned when the rule fired may
    // make it twice), not twenty times.
    let tried = acme_tries.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&tried), "acme's mail offered {tried} times");
}

/// A reputation circuit breaker: campaign "spring" has 20 % unknown recipients (`550 5.1.1`),
/// "summer" of the same tenant none. After the minimum sample (20 recipients with a final
/// outcome) spring's breaker opens: its queued mail is held (not bounced), new injections for it
/// get 429, summer keeps flowing; `sluice campaign resume spring` releases the held mail.
#[test]
fn a_campaigns_breaker_holds_it_and_spares_its_sibling_until_resumed() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    // Everything is deferred until all of it is queued (`open`), so the breaker opens with
    // spring's mail queued behind it.
    let (open, reject) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(true)));
    let (opened, rejecting) = (open.clone(), reject.clone());
    let script: crate::common::sink::Script = Arc::new(move |r: &RcptSeen<'_>| {
        if !opened.load(SeqCst) {
            return Some("451 4.3.0 not yet".into());
        }
        (r.rcpt.starts_with("bad") && rejecting.load(SeqCst))
            .then(|| "550 5.1.1 The email account that you tried to reach does not exist".into())
    });
    let sink = Sink::start(Behavior { script: Some(script), ..Behavior::default() });
    let cfg = sink.route(
        "builtin_automation = false\n\
         [shaping.default]\nconnections = 1\nmessages_per_connection = 100000\n\
         [circuit_breaker]\nmin_sample = 20\nhard_bounce_rate = 0.1\n",
    );
    let s = Sluice::start(&cfg);
    let token = s.inject_token("breaker");
    let inject = |campaign: &str, emails: Vec<String>| {
        let recipients: Vec<_> = emails.iter().map(|e| json!({ "email": e })).collect();
        let req = json!({
            "envelope_sender": "news@sender.example",
            "content": "From: news@sender.example\nSubject: breaker\n\nbody\n",
            "recipients": recipients,
            "tenant": "acme",
            "campaign": campaign,
        });
        s.agent_post_json("/api/inject/v1", &token, &req)
    };
    // Interleaved, so the tenant as a whole stays at 5 % hard bounces.
    for batch in 0..20 {
        let spring = (0..5)
            .map(|i| {
                let n = batch * 5 + i;
                if n % 5 == 0 { format!("bad{n}@example.org") } else { format!("s{n}@example.org") }
            })
            .collect();
        assert_eq!(inject("spring", spring).0, 200);
        let summer = (0..15).map(|i| format!("m{}@example.org", batch * 15 + i)).collect();
        assert_eq!(inject("summer", summer).0, 200);
    }
    open.store(true, SeqCst);
    let log = s.wait_event(60, |e| e["event"] == "circuit_open");
    let open = events(&log, "circuit_open").next().unwrap().clone();
    assert_eq!(
        (open["scope"].as_str(), open["campaign"].as_str()),
        (Some("campaign"), Some("spring"))
    );
    assert!(open["reason"].as_str().unwrap().starts_with("hard bounce rate"), "{open}");
    let circuits = std::fs::read_to_string(s.data_dir.join("circuits.json")).unwrap();
    assert!(circuits.contains("spring"), "{circuits}");
    // New mail for spring is refused; summer's is not.
    let (status, body) = inject("spring", vec!["late@example.org".into()]);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("circuit breaker"), "{body}");
    let ended = |log: &[serde_json::Value], prefix: &str| {
        log.iter()
            .filter(|e| e["event"] == "delivered" || e["event"] == "failed")
            .filter(|e| e["recipient"].as_str().is_some_and(|r| r.starts_with(prefix)))
            .count()
    };
    let log = s.wait_log(60, |log| ended(log, "m") == 300);
    let spring_done = ended(&log, "s") + ended(&log, "bad");
    assert!(spring_done < 60, "spring went on after its breaker opened: {spring_done} of 100");
    let held = events(&log, "deferred")
        .filter(|e| {
            e["reply"].as_str().unwrap_or("").contains("circuit breaker of campaign spring")
        })
        .count();
    assert!(held > 0, "no held spring mail");
    let (_, m) = s.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("sluice_circuit_open{scope=\"campaign\"} 1"), "{m}");
    assert!(m.contains("sluice_circuit_open{scope=\"tenant\"} 0"), "{m}");
    // The list is fixed now; resume releases the held mail and re-arms the breaker.
    reject.store(false, SeqCst);
    let out = std::process::Command::new(BIN)
        .args(["campaign", "resume", "spring", "--config"])
        .arg(&s.config)
        .arg("--admin")
        .arg(s.admin.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("spring"));
    let log = s.wait_log(60, |log| ended(log, "s") + ended(log, "bad") == 100);
    assert_eq!(events(&log, "circuit_closed").count(), 1);
    assert_eq!(inject("spring", vec!["again@example.org".into()]).0, 200);
}
