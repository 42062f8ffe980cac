//! Delivery over smart-host routes to scripted sinks on loopback (no DNS, no internet).

use std::time::{Duration, Instant};

use crate::common::sink::{Behavior, Sink};
use crate::common::*;

fn route_to(sink: &Sink, extra: &str) -> String {
    sink.route(extra)
}

#[test]
fn smarthost_delivery_then_the_message_leaves_the_queue() {
    let sink = Sink::start(Behavior { pipelining: true, ..Default::default() });
    let s = Sluice::start(&route_to(&sink, "[metrics]\ndomains = [\"example.org\"]\n"));
    let r = Client::ehlo(s.smtp).send_message("<relay@t>", "Hello\r\n..starts with a dot\r\n");
    assert_eq!(code(&r), 250, "{r}");
    let got = sink.wait_for(1, 10);
    assert_eq!(got[0].mail_from, "a@example.com");
    assert_eq!(got[0].rcpts, vec!["b@example.org".to_string()]);
    let text = String::from_utf8(got[0].data.clone()).unwrap();
    assert!(text.starts_with("Received: from client.test"), "{text}");
    assert!(
        text.ends_with("Message-ID: <relay@t>\r\n\r\nHello\r\n.starts with a dot\r\n"),
        "{text}"
    );
    s.wait_queue(10, |q| q.is_empty());
    let (_, m) = s.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("sluice_deliveries_total{outcome=\"delivered\"} 1"));
    assert!(
        m.contains(
            "sluice_domain_deliveries_total{domain=\"example.org\",outcome=\"delivered\"} 1"
        ),
        "{m}"
    );
    assert!(m.contains("sluice_queue_recipients{state=\"queued\"} 0"));
}

/// Checks a DSN with Python's email package: a valid multipart/report whose delivery-status part
/// names `rcpt` with `status`. Returns the status fields for further checks.
fn check_dsn(dsn: &[u8], rcpt: &str, status: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dsn.eml");
    std::fs::write(&path, dsn).unwrap();
    python(
        r#"
import email, sys
from email import policy
msg = email.message_from_binary_file(open(sys.argv[1], "rb"), policy=policy.default)
assert msg.get_content_type() == "multipart/report", msg.get_content_type()
assert msg.get_param("report-type") == "delivery-status"
parts = list(msg.iter_parts())
assert [p.get_content_type() for p in parts][:2] == ["text/plain", "message/delivery-status"], [p.get_content_type() for p in parts]
assert parts[2].get_content_type() in ("message/rfc822", "text/rfc822-headers")
fields = [str(f) for f in parts[1].get_payload()]
per_rcpt = fields[1]
assert sys.argv[2] in per_rcpt and "Action: failed" in per_rcpt and ("Status: " + sys.argv[3]) in per_rcpt, per_rcpt
print(per_rcpt)
"#,
        &[path.to_str().unwrap(), rcpt, status],
    )
}

#[test]
fn mixed_outcomes_one_delivered_one_bounced_one_retried() {
    let mut b = Behavior { pipelining: true, ..Default::default() };
    b.rcpt.insert("bad@example.org".into(), vec!["550 5.1.1 no such user".into()]);
    b.rcpt.insert("later@example.org".into(), vec!["451 4.2.0 try later".into(), "250 ok".into()]);
    let sink = Sink::start(b);
    let s = Sluice::start(&route_to(&sink, ""));
    let mut c = Client::ehlo(s.smtp);
    c.cmd("MAIL FROM:<a@example.com>");
    for r in ["ok@example.org", "bad@example.org", "later@example.org"] {
        assert_eq!(code(&c.cmd(&format!("RCPT TO:<{r}>"))), 250);
    }
    c.cmd("DATA");
    assert_eq!(code(&c.cmd("Message-ID: <mixed@t>\r\n\r\nx\r\n.")), 250);
    // ok@ delivered, bad@ bounced, later@ delivered on the retry: then the message is gone.
    s.wait_queue(15, |q| q.is_empty());
    let got = sink.wait_for(3, 5);
    let to =
        |addr: &str| got.iter().filter(|m| m.rcpts == vec![addr.to_string()]).collect::<Vec<_>>();
    assert_eq!(to("ok@example.org").len(), 1);
    assert_eq!(to("later@example.org").len(), 1);
    let dsn = to("a@example.com");
    assert_eq!(dsn.len(), 1, "exactly one bounce, to the sender");
    assert_eq!(dsn[0].mail_from, "", "bounces come from <>");
    let fields = check_dsn(&dsn[0].data, "bad@example.org", "5.1.1");
    assert!(fields.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"), "{fields}");
    assert!(fields.contains("X-Sluice-Category: invalid_recipient"), "{fields}");
    assert!(
        String::from_utf8_lossy(&dsn[0].data).contains("Message-ID: <mixed@t>"),
        "original attached"
    );
    let (_, m) = s.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("sluice_bounces_total{category=\"invalid_recipient\"} 1"), "{m}");
    assert!(m.contains("sluice_deferrals_total{category=\"other\"} 1"), "{m}");
    assert!(m.contains("sluice_dsns_total{action=\"failed\"} 1"), "{m}");
    // The delivery log has one line per event, for each recipient.
    // Reception, the DSN queued and delivered, ok delivered, bad failed, later deferred then
    // delivered: 7.
    let log = s.delivery_log(7);
    let events: Vec<(String, String)> = log
        .iter()
        .map(|e| {
            let who = e["recipient"].as_str().or(e["recipients"][0].as_str()).unwrap_or("");
            (e["event"].as_str().unwrap().to_string(), who.to_string())
        })
        .collect();
    for want in [
        ("reception", "ok@example.org"),
        ("delivered", "ok@example.org"),
        ("failed", "bad@example.org"),
        ("bounce_queued", "a@example.com"),
        ("deferred", "later@example.org"),
        ("delivered", "later@example.org"),
    ] {
        assert!(
            events.contains(&(want.0.into(), want.1.into())),
            "{want:?} missing from {events:?}"
        );
    }
    let deferred = log.iter().find(|e| e["event"] == "deferred").unwrap();
    assert_eq!(deferred["reply"], "451 4.2.0 try later");
    assert_eq!(deferred["category"], "other");
    let failed = log.iter().find(|e| e["event"] == "failed").unwrap();
    assert_eq!(failed["category"], "invalid_recipient");
    assert!(log.iter().filter(|e| e["event"] == "delivered").all(|e| e["category"].is_null()));
    assert_eq!(deferred["attempt"], 1);
    assert_eq!(deferred["destination"], sink.addr.to_string());
    assert_eq!(deferred["remote"], sink.addr.to_string());
    assert!(deferred["next_attempt"].as_u64().unwrap() > deferred["time"].as_u64().unwrap());
    let reception = log.iter().find(|e| e["event"] == "reception").unwrap();
    assert_eq!(reception["recipients"].as_array().unwrap().len(), 3);
    assert_eq!(reception["sender"], "a@example.com");
}

/// After max_age a recipient expires: exactly one DSN (status 4.4.7), then the message is gone.
#[test]
fn expiry_bounces_exactly_once() {
    let mut b = Behavior::default();
    b.rcpt.insert("late@example.org".into(), vec!["451 4.3.0 not now".into()]);
    let sink = Sink::start(b);
    let s = Sluice::start(
        &route_to(&sink, "").replace("retry = [\"1s\"]", "retry = [\"300ms\"]\nmax_age = \"2s\""),
    );
    assert_eq!(
        code(&Client::ehlo(s.smtp).send_message_to("<late@t>", "late@example.org", "x\r\n")),
        250
    );
    // A DSN is stored before its original leaves the queue: with the queue empty, every DSN
    // sluice made has reached the sink (which records before it answers 250). No sleep needed.
    s.wait_queue(20, |q| q.is_empty());
    let dsns: Vec<_> = sink.messages().into_iter().filter(|m| m.mail_from.is_empty()).collect();
    assert_eq!(dsns.len(), 1, "exactly one DSN");
    let fields = check_dsn(&dsns[0].data, "late@example.org", "4.4.7");
    assert!(fields.contains("X-Sluice-Category: message_expired"), "{fields}");
}

/// RFC 3461 / RFC 5321 6.1: a message from <> is never bounced.
#[test]
fn null_sender_is_never_bounced() {
    let mut b = Behavior::default();
    b.rcpt.insert("bad@example.org".into(), vec!["550 5.1.1 no such user".into()]);
    let sink = Sink::start(b);
    let s = Sluice::start(&route_to(&sink, ""));
    let mut c = Client::ehlo(s.smtp);
    c.cmd("MAIL FROM:<>");
    c.cmd("RCPT TO:<bad@example.org>");
    c.cmd("DATA");
    assert_eq!(code(&c.cmd("Message-ID: <bounce-of-bounce@t>\r\n\r\nx\r\n.")), 250);
    // Queue empty: a DSN, had one been made, would already be at the sink (see above).
    s.wait_queue(10, |q| q.is_empty());
    assert!(sink.messages().is_empty(), "no DSN for a null sender");
    let (_, m) = s.http_get("/metrics");
    assert!(
        String::from_utf8(m).unwrap().contains("sluice_deliveries_total{outcome=\"failed\"} 1")
    );
}

#[test]
fn dropped_mid_data_is_retried_and_delivered_once() {
    let sink = Sink::start(Behavior { drop_in_data: 1, ..Default::default() });
    let s = Sluice::start(&route_to(&sink, ""));
    let body = "line of text for the sink to drop in the middle\r\n".repeat(20);
    assert_eq!(code(&Client::ehlo(s.smtp).send_message("<drop@t>", &body)), 250);
    s.wait_queue(15, |q| q.is_empty());
    let got = sink.messages();
    assert_eq!(got.len(), 1, "delivered exactly once");
    assert!(String::from_utf8_lossy(&got[0].data).ends_with(&body));
    assert!(sink.connections() >= 2);
    assert!(
        s.log().contains("destination backed off"),
        "a dropped session slows the destination down"
    );
}

/// RFC 3030 outbound: a CHUNKING peer gets BDAT with the content as is.
#[test]
fn chunking_peer_gets_bdat() {
    let sink = Sink::start(Behavior { chunking: true, pipelining: true, ..Default::default() });
    let s = Sluice::start(&route_to(&sink, ""));
    assert_eq!(code(&Client::ehlo(s.smtp).send_message("<bdat-out@t>", "..two dots\r\n")), 250);
    let got = sink.wait_for(1, 10);
    assert!(got[0].bdat);
    assert!(
        String::from_utf8_lossy(&got[0].data).ends_with("\r\n.two dots\r\n"),
        "unstuffed once at reception, sent as is"
    );
    s.wait_queue(10, |q| q.is_empty());
}

#[test]
fn unreachable_smarthost_defers_with_the_reason() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let cfg = format!(
        "[[route]]\ndomains = [\"*\"]\nsmarthost = \"{closed}\"\ntls = \"disabled\"\n[queue]\nretry = [\"1h\"]\n[delivery]\nscan_interval = \"100ms\"\n"
    );
    let s = Sluice::start(&cfg);
    assert_eq!(code(&Client::ehlo(s.smtp).send_message("<nowhere@t>", "x\r\n")), 250);
    let q = s.wait_queue(10, |q| q.len() == 1 && q[0]["recipients"][0]["attempts"] == 1);
    let r = &q[0]["recipients"][0];
    assert_eq!(r["state"], "queued");
    assert!(r["last_reply"].as_str().unwrap().contains("connection to"), "{r}");
    assert!(!r["next_attempt"].is_null());
}

/// MX delivery (RFC 5321 5.1): preference order, the next MX when one is down, A fallback.
#[test]
fn mx_preference_fallback_and_implicit_mx() {
    let dns = crate::common::dns::TestDns::start();
    // Two MX hosts on one port at different loopback addresses; mx1 (preferred) is down at first.
    let mx2 = Sink::start_on("127.0.0.3:0".parse().unwrap(), Behavior::default());
    let port = mx2.addr.port();
    dns.mx("mx.test", 20, "mx2.mx.test").mx("mx.test", 10, "mx1.mx.test");
    dns.a("mx1.mx.test", "127.0.0.2").a("mx2.mx.test", "127.0.0.3");
    // A domain without MX: its own address is the implicit MX.
    dns.a("plain.test", "127.0.0.4");
    let plain = Sink::start_on(format!("127.0.0.4:{port}").parse().unwrap(), Behavior::default());
    let cfg = format!(
        "{}[delivery]\nmx_port = {port}\nscan_interval = \"100ms\"\n[shaping.default]\nidle_timeout = \"100ms\"\n",
        dns.config()
    );
    let s = Sluice::start(&cfg);

    let mut c = Client::ehlo(s.smtp);
    c.cmd("MAIL FROM:<a@example.com>");
    c.cmd("RCPT TO:<u@mx.test>");
    c.cmd("RCPT TO:<v@plain.test>");
    c.cmd("DATA");
    assert_eq!(code(&c.cmd("Message-ID: <mx1@t>\r\n\r\nx\r\n.")), 250);
    assert_eq!(mx2.wait_for(1, 10)[0].rcpts, vec!["u@mx.test".to_string()], "fell back to mx2");
    assert_eq!(plain.wait_for(1, 10)[0].rcpts, vec!["v@plain.test".to_string()]);
    s.wait_queue(10, |q| q.is_empty());

    // Once mx1 is up (and the idle connection to mx2 has closed), it is preferred.
    let mx1 = Sink::start_on(format!("127.0.0.2:{port}").parse().unwrap(), Behavior::default());
    std::thread::sleep(Duration::from_millis(400));
    let mut c = Client::ehlo(s.smtp);
    c.cmd("MAIL FROM:<a@example.com>");
    c.cmd("RCPT TO:<w@mx.test>");
    c.cmd("DATA");
    assert_eq!(code(&c.cmd("Message-ID: <mx3@t>\r\n\r\nz\r\n.")), 250);
    assert_eq!(mx1.wait_for(1, 10)[0].rcpts, vec!["w@mx.test".to_string()]);
    assert_eq!(mx2.messages().len(), 1);
    let (_, m) = s.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    let value = |series: &str| -> u64 {
        let line = m.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("{series}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("sluice_dns_lookups_total{result=\"ok\",type=\"mx\"}") >= 3, "{m}");
    assert!(value("sluice_dns_seconds_count") >= 3);
}

/// Null MX (RFC 7505) and NXDOMAIN fail permanently; SERVFAIL defers.
#[test]
fn null_mx_nxdomain_fail_and_servfail_defers() {
    let dns = crate::common::dns::TestDns::start();
    dns.null_mx("nullmx.test").servfail("broken.test");
    let cfg = format!(
        "{}[queue]\nretry = [\"1h\"]\n[delivery]\nscan_interval = \"100ms\"\n",
        dns.config()
    );
    let s = Sluice::start(&cfg);
    let mut c = Client::ehlo(s.smtp);
    c.cmd("MAIL FROM:<a@example.com>");
    for r in ["x@nullmx.test", "y@nowhere.test", "z@broken.test"] {
        c.cmd(&format!("RCPT TO:<{r}>"));
    }
    c.cmd("DATA");
    assert_eq!(code(&c.cmd("Message-ID: <dnsfail@t>\r\n\r\nx\r\n.")), 250);
    let q = s.wait_queue(15, |q| {
        q.len() == 1 && q[0]["recipients"].as_array().unwrap().iter().all(|r| r["attempts"] == 1)
    });
    let r = q[0]["recipients"].as_array().unwrap();
    assert_eq!(r[0]["state"], "failed");
    assert!(r[0]["last_reply"].as_str().unwrap().contains("null MX"), "{}", r[0]);
    assert_eq!(r[1]["state"], "failed");
    assert!(r[1]["last_reply"].as_str().unwrap().contains("does not exist"), "{}", r[1]);
    assert_eq!(r[2]["state"], "queued");
    assert!(r[2]["last_reply"].as_str().unwrap().contains("DNS"), "{}", r[2]);
}

/// A bounce after a failure that came before the content was read (NXDOMAIN) still returns the
/// original: its headers for RET=HDRS, all of it for RET=FULL (RFC 3461 4.3), checked with
/// Python's email package.
#[test]
fn bounces_after_nxdomain_return_the_original() {
    let dns = crate::common::dns::TestDns::start();
    dns.servfail("example.com"); // the DSNs stay queued, to be read
    let cfg = format!(
        "{}[queue]\nretry = [\"1h\"]\n[delivery]\nscan_interval = \"100ms\"\n",
        dns.config()
    );
    let s = Sluice::start(&cfg);
    for ret in ["HDRS", "FULL"] {
        let mut c = Client::ehlo(s.smtp);
        c.cmd(&format!("MAIL FROM:<a@example.com> RET={ret}"));
        c.cmd("RCPT TO:<y@nowhere.test>");
        c.cmd("DATA");
        let r = c.cmd(&format!(
            "Message-ID: <ret-{ret}@t>\r\nSubject: original\r\n\r\nthe original body\r\n."
        ));
        assert_eq!(code(&r), 250, "{r}");
    }
    let q = s.wait_queue(15, |q| q.iter().filter(|m| m["sender"] == "").count() == 2);
    for m in q.iter().filter(|m| m["sender"] == "") {
        let dsn = s.raw_message(m["id"].as_str().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dsn.eml");
        std::fs::write(&path, &dsn).unwrap();
        python(
            r#"
import email, sys
from email import policy
msg = email.message_from_binary_file(open(sys.argv[1], "rb"), policy=policy.default)
parts = list(msg.iter_parts())
returned = parts[2]
if returned.get_content_type() == "text/rfc822-headers":
    text = returned.get_content()
    assert "Message-ID: <ret-HDRS@t>" in text and "Subject: original" in text, text
    assert "the original body" not in text, text
else:
    assert returned.get_content_type() == "message/rfc822", returned.get_content_type()
    inner = returned.get_payload()[0]
    assert inner["Message-ID"] == "<ret-FULL@t>", inner["Message-ID"]
    assert "the original body" in inner.get_content(), inner.get_content()
"#,
            &[path.to_str().unwrap()],
        );
    }
}

/// DESIGN.md invariant 2 during delivery: kill -9 while deliveries are in flight, restart; every
/// recipient is delivered in the end, duplicates only where the sink had already said 250.
#[test]
fn kill9_during_delivery_then_everything_is_delivered() {
    let sink =
        Sink::start(Behavior { end_delay: Duration::from_millis(150), ..Default::default() });
    let mut s = Sluice::start(&route_to(&sink, ""));
    let ids: Vec<String> = (0..60).map(|i| format!("<k{i}@t>")).collect();
    let mut c = Client::ehlo(s.smtp);
    for id in &ids {
        assert_eq!(code(&c.send_message(id, "x\r\n")), 250);
    }
    // Kill once half the deliveries have completed: a spool that forgot its outcomes would
    // then send 30 or more again, far over the bound below.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink.messages().len() < 30 {
        assert!(Instant::now() < deadline, "no delivery started");
        std::thread::sleep(Duration::from_millis(10));
    }
    s.kill9();
    let before = sink.messages().len();
    assert!(
        before < ids.len(),
        "everything was delivered before the kill; the test proves nothing"
    );
    s.spawn();
    s.wait_queue(30, |q| q.is_empty());
    let got = sink.messages();
    for id in &ids {
        let n = got
            .iter()
            .filter(|m| String::from_utf8_lossy(&m.data).contains(&format!("Message-ID: {id}")))
            .count();
        assert!((1..=2).contains(&n), "{id} was delivered {n} times");
    }
    let duplicates = got.len() - ids.len();
    eprintln!("delivered {} before the kill; {} duplicates after restart", before, duplicates);
    // Only deliveries in flight at the kill, or whose 250 came but whose outcome was not yet
    // durable, can be repeated: at most two per connection, 10 connections by default.
    assert!(duplicates <= 20, "{duplicates} duplicates, {before} delivered before the kill");
}

/// `sluice queue flush | bounce | delete` against the running daemon.
#[test]
fn queue_admin_flush_bounce_delete() {
    let mut b = Behavior::default();
    b.rcpt.insert("slow@example.org".into(), vec!["451 4.3.0 not now".into()]);
    let sink = Sink::start(b);
    let cfg = route_to(&sink, "").replace("retry = [\"1s\"]", "retry = [\"1h\"]");
    let s = Sluice::start(&cfg);
    let mut c = Client::ehlo(s.smtp);
    let first = c.send_message_to("<admin1@t>", "slow@example.org", "x\r\n");
    let second = c.send_message_to("<admin2@t>", "slow@example.org", "y\r\n");
    let id_of = |r: &str| r.trim().rsplit(' ').next().unwrap().to_string();
    let (id1, id2) = (id_of(&first), id_of(&second));
    s.wait_queue(10, |q| q.len() == 2 && q.iter().all(|m| m["recipients"][0]["attempts"] == 1));
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(["queue"])
            .args(args)
            .args(["--admin", &s.admin.to_string(), "--config"])
            .arg(&s.config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    // flush: retried now instead of in an hour.
    assert_eq!(cli(&["flush", "--domain", "example.org"])["flushed_recipients"], 2);
    s.wait_queue(10, |q| q.len() == 2 && q.iter().all(|m| m["recipients"][0]["attempts"] == 2));
    // bounce: a DSN to the sender, then the message is gone.
    assert_eq!(cli(&["bounce", &id1])["recipients"], 1);
    let dsn = sink.wait_for(1, 10);
    assert_eq!(dsn[0].mail_from, "");
    assert_eq!(dsn[0].rcpts, vec!["a@example.com".to_string()]);
    check_dsn(&dsn[0].data, "slow@example.org", "5.0.0");
    // delete: gone without a bounce.
    assert_eq!(cli(&["delete", &id2])["deleted"], id2.as_str());
    // Queue empty: a DSN, had one been made, would already be at the sink.
    s.wait_queue(10, |q| q.is_empty());
    assert_eq!(sink.messages().len(), 1, "delete sends no bounce");
}

/// Operator actions never race a delivery in flight: `queue bounce` and `queue delete` wait for
/// the attempt to finish, so a message delivered meanwhile is neither bounced nor re-sent, and
/// `queue flush` leaves in-flight messages alone.
#[test]
fn operator_actions_wait_for_the_delivery_in_flight() {
    let sink = Sink::start(Behavior { end_delay: Duration::from_secs(2), ..Default::default() });
    let s = Sluice::start(&route_to(&sink, ""));
    let cli = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(["queue"])
            .args(args)
            .args(["--admin", &s.admin.to_string(), "--config"])
            .arg(&s.config)
            .output()
            .unwrap()
    };
    let mut c = Client::ehlo(s.smtp);
    let r = c.send_message("<inflight@t>", "x\r\n");
    let id = r.trim().rsplit(' ').next().unwrap().to_string();
    // The sink has the whole message and sits on its reply: the delivery is in flight.
    sink.wait_data_ends(1, 10);
    assert_eq!(cli(&["flush"]).status.code(), Some(0));
    let out = cli(&["bounce", &id]);
    // It returned only after the 250: the message was delivered, so there was nothing to bounce.
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such message"));
    s.wait_queue(10, |q| q.is_empty());
    assert_eq!(sink.messages().len(), 1, "a bounce (or a second copy) was sent as well");

    let r = c.send_message("<inflight2@t>", "y\r\n");
    let id = r.trim().rsplit(' ').next().unwrap().to_string();
    sink.wait_data_ends(2, 10);
    assert!(!cli(&["delete", &id]).status.success(), "deleted a message being delivered");
    s.wait_queue(10, |q| q.is_empty());
    assert_eq!(sink.messages().len(), 2);
    let log = s.delivery_log(3);
    assert_eq!(log.iter().filter(|e| e["event"] == "delivered").count(), 2, "{log:?}");
}

/// Shaping: 1,000 messages to one destination over at most `connections` connections at once,
/// each carrying at most `messages_per_connection`.
#[test]
fn connection_reuse_within_destination_limits() {
    let sink = Sink::start(Behavior { pipelining: true, ..Default::default() });
    let extra = "[shaping.default]\nconnections = 3\nmessages_per_connection = 50\nidle_timeout = \"300ms\"\n";
    let s = Sluice::start(&route_to(&sink, extra));
    let mut c = Client::connect(s.smtp);
    c.reply();
    // Pipelined injection, 50 messages per write.
    c.send(b"EHLO load\r\n").unwrap();
    c.reply();
    for batch in 0..20 {
        let mut w = String::new();
        for i in 0..50 {
            w.push_str(&format!(
                "MAIL FROM:<a@example.com>\r\nRCPT TO:<r{i}@example.org>\r\nDATA\r\nMessage-ID: <shape{batch}-{i}@t>\r\n\r\nx\r\n.\r\n"
            ));
        }
        c.send(w.as_bytes()).unwrap();
        for _ in 0..200 {
            let r = c.reply().unwrap();
            assert!(code(&r) < 400, "{r}");
        }
    }
    sink.wait_for(1000, 60);
    s.wait_queue(30, |q| q.is_empty());
    std::thread::sleep(Duration::from_millis(600)); // idle connections close
    let per = sink.per_connection();
    assert_eq!(per.iter().sum::<usize>(), 1000, "{per:?}");
    assert!(per.iter().all(|&n| n <= 50), "a connection carried more than 50: {per:?}");
    assert!(per.len() >= 20, "1000 messages need at least 20 connections of 50: {per:?}");
    assert!(sink.max_concurrent() <= 3, "{} connections at once", sink.max_concurrent());
    eprintln!("{} connections, at most {} at once", per.len(), sink.max_concurrent());
}

/// Shaping: a rate of R/s is not exceeded (GCRA), measured at the sink.
#[test]
fn rate_limit_is_respected() {
    let sink = Sink::start(Behavior { pipelining: true, ..Default::default() });
    let extra = "[shaping.default]\nconnections = 4\nrate = \"20/s\"\n";
    let s = Sluice::start(&route_to(&sink, extra));
    let mut c = Client::ehlo(s.smtp);
    for i in 0..41 {
        assert_eq!(code(&c.send_message(&format!("<rate{i}@t>"), "x\r\n")), 250);
    }
    let got = sink.wait_for(41, 30);
    let span = got.last().unwrap().at.duration_since(got[0].at).as_secs_f64();
    let rate = 40.0 / span;
    eprintln!("41 messages in {span:.3} s: {rate:.1}/s against a limit of 20/s");
    // Never faster than the limit (10 % tolerance for timer granularity); a noisy machine may be
    // slower, which is not a violation, within reason.
    assert!(rate <= 22.0, "{rate:.1}/s exceeds 20/s");
    assert!(rate >= 10.0, "{rate:.1}/s is far below 20/s");
}

/// Sends one message with DSN parameters on RCPT (RFC 3461) and returns nothing; asserts 250.
fn send_with_dsn(s: &Sluice, rcpt_line: &str, id: &str) {
    let mut c = Client::ehlo(s.smtp);
    assert_eq!(code(&c.cmd("MAIL FROM:<a@example.com> RET=FULL ENVID=env+2B1")), 250);
    assert_eq!(code(&c.cmd(rcpt_line)), 250);
    assert_eq!(code(&c.cmd("DATA")), 354);
    assert_eq!(code(&c.cmd(&format!("Message-ID: <{id}>\r\nSubject: s\r\n\r\nbody\r\n."))), 250);
}

/// RFC 3461 NOTIFY=DELAY: exactly one delay notice once the recipient has waited `delay_notice`;
/// the recipient stays queued.
#[test]
fn delay_notice_is_sent_once() {
    let mut b = Behavior::default();
    b.rcpt.insert("slow@example.org".into(), vec!["451 4.2.0 greylisted".into()]);
    let sink = Sink::start(b);
    let s = Sluice::start(
        &route_to(&sink, "")
            .replace("retry = [\"1s\"]", "retry = [\"300ms\"]\ndelay_notice = \"1s\""),
    );
    send_with_dsn(&s, "RCPT TO:<slow@example.org> NOTIFY=DELAY,FAILURE", "delay@t");
    let deadline = Instant::now() + Duration::from_secs(15);
    let dsns = loop {
        let d: Vec<_> = sink.messages().into_iter().filter(|m| m.mail_from.is_empty()).collect();
        if !d.is_empty() || Instant::now() > deadline {
            break d;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(dsns.len(), 1, "a delay notice arrives");
    let text = String::from_utf8_lossy(&dsns[0].data).to_string();
    for needle in [
        "Subject: Delayed Mail",
        "Action: delayed",
        "Status: 4.2.0",
        "Will-Retry-Until:",
        "Original-Envelope-Id: env+2B1",
        "text/rfc822-headers",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(!text.contains("\r\nbody\r\n"), "headers only");
    // More retries follow, but no second notice: wait for three more attempts (events the
    // queue records), each a chance to send one, then count.
    let attempts = |q: &[serde_json::Value]| q[0]["recipients"][0]["attempts"].as_u64().unwrap();
    let now = attempts(&s.queue_list());
    let q = s.wait_queue(15, |q| q.len() == 1 && attempts(q) >= now + 3);
    assert_eq!(q.len(), 1, "still queued");
    let later = sink.messages().into_iter().filter(|m| m.mail_from.is_empty()).count();
    assert_eq!(later, 1, "exactly one delay notice");
}

/// NOTIFY=SUCCESS to a server without DSN: sluice reports "relayed" itself. To a DSN server, the
/// parameters go on with the message and sluice stays quiet (RFC 3461 4.1, 6.2.3.5).
#[test]
fn success_notices_and_dsn_passthrough() {
    let plain = Sink::start(Behavior::default());
    let s = Sluice::start(&route_to(&plain, ""));
    send_with_dsn(
        &s,
        "RCPT TO:<ok@example.org> NOTIFY=SUCCESS ORCPT=rfc822;ok@example.org",
        "s1@t",
    );
    let got = plain.wait_for(2, 10);
    let dsn = got.iter().find(|m| m.mail_from.is_empty()).expect("a success notice");
    let text = String::from_utf8_lossy(&dsn.data).to_string();
    for needle in ["Subject: Successful Mail Delivery Report", "Action: relayed", "Status: 2.0.0"] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let original = got.iter().find(|m| !m.mail_from.is_empty()).unwrap();
    assert!(!original.mail_params.contains("RET="), "no DSN parameters to a server without DSN");
    assert_eq!(original.rcpt_params, vec![String::new()]);

    let dsn_sink = Sink::start(Behavior { dsn: true, ..Default::default() });
    let s = Sluice::start(&route_to(&dsn_sink, ""));
    send_with_dsn(
        &s,
        "RCPT TO:<ok@example.org> NOTIFY=SUCCESS ORCPT=rfc822;ok@example.org",
        "s2@t",
    );
    let got = dsn_sink.wait_for(1, 10);
    assert!(got[0].mail_params.ends_with(" RET=FULL ENVID=env+2B1"), "{}", got[0].mail_params);
    assert_eq!(got[0].rcpt_params, vec!["NOTIFY=SUCCESS ORCPT=rfc822;ok@example.org".to_string()]);
    // Queue empty: a success DSN, had sluice made one, would already be at the sink.
    s.wait_queue(10, |q| q.is_empty());
    assert_eq!(dsn_sink.messages().len(), 1, "the DSN-capable next hop reports, not sluice");
}

/// A server that closes idle connections: the pooled connection is dropped when the server
/// closes it, so the next message goes over a fresh one and is never deferred for it.
#[test]
fn connection_closed_by_the_server_while_idle_is_not_reused() {
    let sink = Sink::start(Behavior { hang_up_after_message: true, ..Default::default() });
    let s = Sluice::start(&route_to(&sink, "[shaping.default]\nidle_timeout = \"10s\"\n"));
    assert_eq!(code(&Client::ehlo(s.smtp).send_message("<first@t>", "x\r\n")), 250);
    sink.wait_for(1, 10);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(code(&Client::ehlo(s.smtp).send_message("<second@t>", "y\r\n")), 250);
    sink.wait_for(2, 10);
    s.wait_queue(10, |q| q.is_empty());
    let log = s.delivery_log(4);
    assert!(log.iter().all(|e| e["event"] != "deferred"), "{log:#?}");
    assert_eq!(sink.connections(), 2);
}
