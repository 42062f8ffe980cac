//! Outbound STARTTLS (RFC 3207) and AUTH (RFC 4954) against sinks on loopback that offer or
//! require them, with certificates made at test time.

use std::path::Path;

use crate::common::sink::{Behavior, Sink, tls_identity};
use crate::common::*;

fn route(sink: &Sink, tls: &str, extra_route: &str) -> String {
    format!(
        "[[route]]\ndomains = [\"*\"]\nsmarthost = \"{}\"\ntls = \"{tls}\"\n{extra_route}\n[queue]\nretry = [\"1h\"]\n[delivery]\nscan_interval = \"200ms\"\n",
        sink.addr
    )
}

fn auth_route(pw_file: &Path, ca: &Path) -> String {
    format!(
        "ca_file = \"{}\"\nauth = {{ username = \"app\", password_file = \"{}\" }}",
        ca.display(),
        pw_file.display()
    )
}

/// The smart-host case of issue #3: a relay that requires STARTTLS and AUTH, and sluice in
/// `required` mode verifying the relay's certificate against a private CA file.
#[test]
fn smarthost_requiring_starttls_and_auth() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, cert) = tls_identity(dir.path(), &["127.0.0.1"]);
    let sink = Sink::start(Behavior {
        pipelining: true,
        tls: Some(tls),
        require_tls: true,
        auth: Some(("app".into(), "s3cret".into())),
        ..Default::default()
    });
    let pw = dir.path().join("relay.pass");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let s = Sluice::start(&route(&sink, "required", &auth_route(&pw, &cert)));
    assert_eq!(code(&Client::ehlo(s.smtp).send_message("<tls-auth@t>", "secret stuff\r\n")), 250);
    let got = sink.wait_for(1, 10);
    assert!(got[0].tls, "delivered over TLS");
    assert_eq!(got[0].auth_user.as_deref(), Some("app"));
    assert!(String::from_utf8_lossy(&got[0].data).ends_with("secret stuff\r\n"));
    s.wait_queue(10, |q| q.is_empty());
    let (_, m) = s.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("sluice_delivery_tls_total{tls=\"yes\"} 1"), "{m}");
    assert!(!s.log().contains("s3cret"), "the password never reaches the log");
}

#[test]
fn wrong_password_defers_and_never_bounces() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, cert) = tls_identity(dir.path(), &["127.0.0.1"]);
    let sink = Sink::start(Behavior {
        tls: Some(tls),
        auth: Some(("app".into(), "right".into())),
        ..Default::default()
    });
    let pw = dir.path().join("relay.pass");
    std::fs::write(&pw, "wrong").unwrap();
    let s = Sluice::start(&route(&sink, "required", &auth_route(&pw, &cert)));
    assert_eq!(code(&Client::ehlo(s.smtp).send_message("<badpw@t>", "x\r\n")), 250);
    let q = s.wait_queue(10, |q| q.len() == 1 && q[0]["recipients"][0]["attempts"] == 1);
    let r = &q[0]["recipients"][0];
    assert_eq!(r["state"], "queued", "an AUTH failure is temporary: {r}");
    assert!(r["last_reply"].as_str().unwrap().contains("535 5.7.8"), "{r}");
    assert_eq!(sink.auth_failures(), 1);
    assert!(sink.messages().is_empty(), "no bounce, no delivery");
    assert!(!s.log().contains("wrong"), "the password never reaches the log");
}

#[test]
fn required_tls_refuses_an_unverified_or_missing_tls() {
    let dir = tempfile::tempdir().unwrap();
    // 1. The relay offers no STARTTLS.
    let plain = Sink::start(Behavior::default());
    let s = Sluice::start(&route(&plain, "required", ""));
    assert_eq!(code(&Client::ehlo(s.smtp).send_message("<notls@t>", "x\r\n")), 250);
    let q = s.wait_queue(10, |q| q.len() == 1 && q[0]["recipients"][0]["attempts"] == 1);
    let why = q[0]["recipients"][0]["last_reply"].as_str().unwrap().to_string();
    assert!(why.contains("does not offer STARTTLS"), "{why}");
    assert!(plain.messages().is_empty());
    // 2. Its certificate is self-signed and not trusted (no ca_file): the handshake fails.
    let (tls, _) = tls_identity(dir.path(), &["127.0.0.1"]);
    let untrusted = Sink::start(Behavior { tls: Some(tls), ..Default::default() });
    let s = Sluice::start(&route(&untrusted, "required", ""));
    assert_eq!(code(&Client::ehlo(s.smtp).send_message("<untrusted@t>", "x\r\n")), 250);
    let q = s.wait_queue(10, |q| q.len() == 1 && q[0]["recipients"][0]["attempts"] == 1);
    let why = q[0]["recipients"][0]["last_reply"].as_str().unwrap().to_string();
    assert!(why.contains("TLS") && why.to_lowercase().contains("certificate"), "{why}");
    assert!(untrusted.messages().is_empty());
    // 3. A certificate for another name, from a trusted CA file: refused too.
    let (tls, cert) = tls_identity(dir.path(), &["other.test"]);
    let wrong_name = Sink::start(Behavior { tls: Some(tls), ..Default::default() });
    let ca = format!("ca_file = \"{}\"", cert.display());
    let s = Sluice::start(&route(&wrong_name, "required", &ca));
    assert_eq!(code(&Client::ehlo(s.smtp).send_message("<name@t>", "x\r\n")), 250);
    let q = s.wait_queue(10, |q| q.len() == 1 && q[0]["recipients"][0]["attempts"] == 1);
    let why = q[0]["recipients"][0]["last_reply"].as_str().unwrap().to_string();
    assert!(why.to_lowercase().contains("certificate"), "{why}");
    assert!(wrong_name.messages().is_empty());
}

/// MX delivery defaults to opportunistic STARTTLS: a self-signed certificate is fine, and a peer
/// without STARTTLS gets plaintext.
#[test]
fn mx_delivery_uses_opportunistic_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, _) = tls_identity(dir.path(), &["mx.tls.test"]);
    let with_tls = Sink::start(Behavior { tls: Some(tls), ..Default::default() });
    let port = with_tls.addr.port();
    let without = Sink::start_on(format!("127.0.0.2:{port}").parse().unwrap(), Behavior::default());
    let dns = crate::common::dns::TestDns::start();
    dns.mx("tls.test", 10, "mx.tls.test").a("mx.tls.test", "127.0.0.1");
    dns.mx("plain.test", 10, "mx.plain.test").a("mx.plain.test", "127.0.0.2");
    let s = Sluice::start(&format!(
        "{}[delivery]\nmx_port = {port}\nscan_interval = \"100ms\"\n",
        dns.config()
    ));
    let mut c = Client::ehlo(s.smtp);
    assert_eq!(code(&c.send_message_to("<o1@t>", "user@tls.test", "x\r\n")), 250);
    assert_eq!(code(&c.send_message_to("<o2@t>", "user@plain.test", "x\r\n")), 250);
    assert!(with_tls.wait_for(1, 10)[0].tls);
    assert!(!without.wait_for(1, 10)[0].tls);
    s.wait_queue(10, |q| q.is_empty());
    let (_, m) = s.http_get("/metrics");
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("sluice_delivery_tls_total{tls=\"yes\"} 1"), "{m}");
    assert!(m.contains("sluice_delivery_tls_total{tls=\"no\"} 1"), "{m}");
}
