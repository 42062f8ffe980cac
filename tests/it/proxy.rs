//! The PROXY protocol behind a real load balancer: Debian's HAProxy on loopback, one frontend
//! with `send-proxy` (v1) and one with `send-proxy-v2`, both connecting to sluice from
//! 127.0.0.2 (its `proxy_networks`). Clients connect to HAProxy from other loopback
//! addresses, so sluice sees each client only through the header: the relay decision, the
//! per-IP cap and `Received:` follow it. Connections that are not from a proxy, or carry no
//! header, are closed and counted.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const PROXY: &str = "127.0.0.2";
const RELAY_CLIENT: &str = "127.0.0.5";
const OTHER_CLIENT: &str = "127.0.0.6";
const THIRD_CLIENT: &str = "127.0.0.7";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// HAProxy in the foreground (`-db`) with two TCP frontends on free loopback ports, killed
/// (by its PID) on drop.
struct Haproxy {
    child: Child,
    v1: SocketAddr,
    v2: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts HAProxy in front of `backend`. Its ports are picked free and then bound by
    /// HAProxy, so another process may take one in between: then HAProxy exits and is started
    /// again on other ports (at most 5 times).
    fn start(backend: SocketAddr) -> Haproxy {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(backend) {
                Ok(h) => return h,
                Err(e) => last = e,
            }
        }
        panic!("haproxy did not start: {last}");
    }

    fn try_start(backend: SocketAddr) -> Result<Haproxy, String> {
        let free = || TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let (v1, v2) = (free(), free());
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("haproxy.cfg");
        let text = format!(
            "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend v1\n  bind {v1}\n  default_backend v1\n\
             backend v1\n  server sluice {backend} send-proxy source {PROXY}\n\
             frontend v2\n  bind {v2}\n  default_backend v2\n\
             backend v2\n  server sluice {backend} send-proxy-v2 source {PROXY}\n"
        );
        std::fs::write(&cfg, text).unwrap();
        let mut child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Ready once both frontends accept (bounded: HAProxy binds within milliseconds).
        let deadline = Instant::now() + Duration::from_secs(20);
        // Each probe from an address of its own: through HAProxy it becomes a session of that
        // client, which must not use up another client's per-IP slot.
        let probe = |src: &str, to: SocketAddr| {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&SocketAddr::new(ip(src), 0).into()).unwrap();
            sock.connect(&to.into()).is_ok()
        };
        while !(probe("127.0.0.101", v1) && probe("127.0.0.102", v2)) {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                return Err(format!("haproxy exited ({status}): {err}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("haproxy did not listen within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Haproxy { child, v1, v2, _dir: dir })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> (Sluice, SocketAddr) {
    let s = Sluice::start(&format!(
        "[relay]\nnetworks = [\"{RELAY_CLIENT}/32\"]\n\
         [limits]\nmax_sessions_per_ip = 1\nexempt_relay_networks = false\n\
         max_connection_rate_per_ip = \"100000/m\"\n[delivery]\nenabled = false\n\
         [[listener]]\nname = \"proxied\"\nmode = \"smtp\"\naddress = \"127.0.0.1:0\"\n\
         proxy_protocol = true\nproxy_networks = [\"{PROXY}/32\"]\n"
    ));
    let proxied = s.listener("proxied");
    (s, proxied)
}

fn metric(s: &Sluice, line_prefix: &str) -> Option<String> {
    let (_, m) = s.http_get("/metrics");
    String::from_utf8(m)
        .unwrap()
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .map(|l| l[line_prefix.len()..].trim().to_string())
}

/// Through HAProxy (v1 and v2), sluice sees the client's address, not HAProxy's: the relay
/// client relays and its `Received:` names it; another client may not relay; the per-IP cap
/// of 1 refuses a second session of one client while a third client still gets in.
#[test]
fn haproxy_v1_and_v2_give_sluice_the_clients_address() {
    if !require_tool("haproxy", "apt-get install haproxy") {
        return;
    }
    let (s, proxied) = start();
    let h = Haproxy::start(proxied);

    for (version, front) in [("v1", h.v1), ("v2", h.v2)] {
        let mut c = Client::connect_from(ip(RELAY_CLIENT), front);
        assert_eq!(code(&c.reply().unwrap()), 220, "{version}");
        assert_eq!(code(&c.cmd("EHLO relay.client.test")), 250);
        let r = c.send_message_to(&format!("<{version}@t>"), "someone@remote.example", "hi\r\n");
        assert_eq!(code(&r), 250, "{version}: the relay client relays: {r}");
        let id = r.split_whitespace().last().unwrap();
        let stored = s.queue_cat(id);
        assert!(
            stored.contains(&format!("Received: from relay.client.test ([{RELAY_CLIENT}])")),
            "{version}: {stored}"
        );
        assert_eq!(code(&c.cmd("QUIT")), 221);

        let mut other = Client::connect_from(ip(OTHER_CLIENT), front);
        assert_eq!(code(&other.reply().unwrap()), 220, "{version}");
        assert_eq!(code(&other.cmd("EHLO other.client.test")), 250);
        assert_eq!(code(&other.cmd("MAIL FROM:<a@example.com>")), 250);
        let r = other.cmd("RCPT TO:<someone@remote.example>");
        assert!(r.starts_with("554 5.7.1"), "{version}: others may not relay: {r}");
        assert_eq!(code(&other.cmd("QUIT")), 221);
    }

    // The per-IP cap counts clients, not the balancer: one session each for two clients,
    // and a second one of the first client (through the other frontend) is refused. (Counted
    // as a difference: HAProxy's readiness probes were sessions of 127.0.0.1.)
    let refused = || {
        metric(&s, "sluice_smtp_connections_refused_total{reason=\"max_sessions_per_ip\"}")
            .map_or(0, |v| v.parse::<u64>().unwrap())
    };
    let before = refused();
    let mut first = Client::connect_from(ip(OTHER_CLIENT), h.v2);
    assert_eq!(code(&first.reply().unwrap()), 220);
    let mut third = Client::connect_from(ip(THIRD_CLIENT), h.v1);
    assert_eq!(code(&third.reply().unwrap()), 220, "another client is not over the cap");
    let mut again = Client::connect_from(ip(OTHER_CLIENT), h.v1);
    let r = again.reply().unwrap();
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert_eq!(refused() - before, 1);
    s.assert_no_panic();
}

/// A PROXY listener talks only to its proxies, and only after a header: a client outside
/// `proxy_networks` is closed even with a well-formed header (it could name any address),
/// and a proxy that sends no header, or a broken one, is closed too. Each is counted.
#[test]
fn a_proxy_listener_refuses_strangers_and_missing_headers() {
    let (s, proxied) = start();
    let refused = |reason: &str| {
        metric(
            &s,
            &format!("sluice_proxy_refused_total{{listener=\"proxied\",reason=\"{reason}\"}}"),
        )
    };

    let mut stranger = Client::connect_from(ip(RELAY_CLIENT), proxied);
    stranger.send(b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 25\r\n").unwrap();
    assert_eq!(stranger.reply(), None, "closed without a greeting");
    assert_eq!(refused("not_a_proxy").as_deref(), Some("1"));

    let mut no_header = Client::connect_from(ip(PROXY), proxied);
    no_header.send(b"EHLO client.test\r\n").unwrap();
    assert_eq!(no_header.reply(), None);
    assert_eq!(refused("malformed").as_deref(), Some("1"));

    let mut broken = Client::connect_from(ip(PROXY), proxied);
    broken.send(b"PROXY TCP4 not-an-address 127.0.0.1 40000 25\r\n").unwrap();
    assert_eq!(broken.reply(), None);
    assert_eq!(refused("malformed").as_deref(), Some("2"));

    // A well-formed header from the proxy gets the session (the control for the above).
    let mut ok = Client::connect_from(ip(PROXY), proxied);
    ok.send(b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 25\r\n").unwrap();
    assert_eq!(code(&ok.reply().unwrap()), 220);
    let log = s.log();
    assert!(log.contains("not in proxy_networks"), "{log}");
    assert!(log.contains("malformed PROXY header"), "{log}");
    // The plain listener beside it is unaffected.
    let mut plain = Client::connect(s.smtp);
    assert_eq!(code(&plain.reply().unwrap()), 220);
    s.assert_no_panic();
}
