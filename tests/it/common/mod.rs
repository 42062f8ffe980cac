//! Shared test harness: a real sluice process from a config in a temp dir, a small blocking SMTP
//! client for scripted exchanges, and checks for the external clients the tests drive.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod dns;
pub mod load;
pub mod mailboxes;
pub mod sink;

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Whether an external tool is available. Under `CI=true` a missing tool fails the test; elsewhere
/// the test says loudly that it is skipped.
pub fn require_tool(tool: &str, install_hint: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{tool} is required under CI=true ({install_hint})");
        }
        eprintln!(
            "SKIPPED: {tool} is not installed ({install_hint}); run .ci/run to install test tools"
        );
    }
    found
}

/// Whether the binary under test has the `test-hooks` switches the negative controls need.
/// Without them a control says so loudly; under `CI=true` that fails the test.
pub fn test_hooks_built() -> bool {
    if !cfg!(feature = "test-hooks") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the negative control needs cargo test --features test-hooks under CI"
        );
        eprintln!("SKIPPED: negative control needs cargo test --features test-hooks");
        return false;
    }
    true
}

pub struct Sluice {
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub child: Option<Child>,
    pub smtp: SocketAddr,
    pub admin: SocketAddr,
    env: Vec<(String, String)>,
    pub agent: ureq::Agent,
    /// Unless a test brings its own `[dns]`, sluice asks this server, which fails every lookup
    /// temporarily: no test ever queries real DNS.
    _dns: Option<dns::TestDns>,
}

impl Sluice {
    /// Starts sluice with listeners on loopback port 0 and `extra` TOML appended.
    pub fn start(extra: &str) -> Sluice {
        Self::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Sluice {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        Self::start_in(dir, data_dir, extra, env)
    }

    /// Starts sluice with its data dir at `data_dir` (e.g. on a plfs mount).
    pub fn start_in(
        dir: tempfile::TempDir,
        data_dir: PathBuf,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Sluice {
        let config = dir.path().join("sluice.toml");
        let own_dns = (!extra.contains("[dns]")).then(|| {
            let d = dns::TestDns::start();
            d.servfail_everything();
            d
        });
        let extra = match &own_dns {
            Some(d) => format!("{extra}\n{}", d.config()),
            None => extra.to_string(),
        };
        let text = format!(
            "hostname = \"sluice.test\"\ndata_dir = \"{}\"\n{}\n[[listener]]\nmode = \"smtp\"\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n",
            data_dir.display(),
            extra
        );
        std::fs::write(&config, text).unwrap();
        let mut s = Sluice {
            dir,
            data_dir,
            config,
            child: None,
            smtp: "127.0.0.1:1".parse().unwrap(),
            admin: "127.0.0.1:1".parse().unwrap(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            agent: ureq::Agent::config_builder().http_status_as_error(false).build().into(),
            _dns: own_dns,
        };
        s.spawn();
        s
    }

    pub fn spawn(&mut self) {
        let addr_file = self.data_dir.join("sluice.addresses.json");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("sluice.log"))
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                self.smtp = v["smtp"][0].as_str().unwrap().parse().unwrap();
                self.admin = v["admin"][0].as_str().unwrap().parse().unwrap();
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sluice exited at start ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "sluice did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first address a listener (by name: smtp, submission, submissions) is bound to.
    pub fn listener(&self, name: &str) -> SocketAddr {
        let text = std::fs::read_to_string(self.data_dir.join("sluice.addresses.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v[name][0].as_str().unwrap_or_else(|| panic!("no {name} listener: {v}")).parse().unwrap()
    }

    /// `sluice queue cat ID`: the stored record as the CLI prints it.
    pub fn queue_cat(&self, id: &str) -> String {
        let out = Command::new(BIN)
            .args(["queue", "cat", id, "--config"])
            .arg(&self.config)
            .args(["--admin", &self.admin.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sluice.log")).unwrap_or_default()
    }

    /// Fails if any task of the server panicked (the panic hook's line is in the log), even
    /// one whose connection the server survived.
    pub fn assert_no_panic(&self) {
        let log = self.log();
        let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
        assert!(panics.is_empty(), "the server panicked:\n{}", panics.join("\n"));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit status once it stopped.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "sluice did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A new named token of scope `inject`, made with `sluice token add` (its last word).
    pub fn inject_token(&self, name: &str) -> String {
        self.token_with(name, &["--scope", "inject"])
    }

    /// A new named token made with `sluice token add NAME ARGS...`.
    pub fn token_with(&self, name: &str, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(["token", "add", name])
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().split_whitespace().last().unwrap().to_string()
    }

    /// The admin API token the daemon made on its first start.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token")).unwrap().trim().to_string()
    }

    /// GET on the admin API, with the admin token.
    pub fn http_get(&self, path: &str) -> (u16, Vec<u8>) {
        let mut resp = self
            .agent
            .get(&format!("http://{}{}", self.admin, path))
            .header("Authorization", &format!("Bearer {}", self.admin_token()))
            .call()
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap())
    }

    /// POSTs `body` as JSON to the admin listener with a bearer token: (status, body).
    pub fn agent_post_json(
        &self,
        path: &str,
        token: &str,
        body: &serde_json::Value,
    ) -> (u16, String) {
        let mut resp = self
            .agent
            .post(&format!("http://{}{}", self.admin, path))
            .header("Authorization", &format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap_or_default())
    }

    /// Polls the queue until `done` says so (or fails after `secs`).
    pub fn wait_queue(
        &self,
        secs: u64,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let q = self.queue_list();
            if done(&q) {
                return q;
            }
            assert!(
                Instant::now() < deadline,
                "queue never reached the expected state: {q:#?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The delivery log's events, once it holds at least `n`; fails the test if it does not
    /// within 10 s (the writer is asynchronous).
    pub fn delivery_log(&self, n: usize) -> Vec<serde_json::Value> {
        let path = self.data_dir.join("log/delivery.jsonl");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let events: Vec<serde_json::Value> =
                text.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
            if events.len() >= n {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "the delivery log has {} events, expected at least {n}: {events:?}",
                events.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `sluice queue ARGS...` against the running daemon; its standard output.
    pub fn queue_cmd(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .arg("queue")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .arg("--admin")
            .arg(self.admin.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `sluice queue destinations --json`, one object per destination.
    pub fn destinations(&self) -> Vec<serde_json::Value> {
        self.queue_cmd(&["destinations", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits (up to `secs`) for a delivery log event that `pick` accepts; all events so far.
    pub fn wait_event(
        &self,
        secs: u64,
        pick: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        self.wait_log(secs, |log| log.iter().any(&pick))
    }

    /// Waits (up to `secs`) until the delivery log's events so far satisfy `done`; returns them.
    pub fn wait_log(
        &self,
        secs: u64,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let path = self.data_dir.join("log/delivery.jsonl");
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            // Whole lines only: the writer may be in the middle of one.
            let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            let events: Vec<serde_json::Value> =
                whole.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
            if done(&events) {
                return events;
            }
            assert!(Instant::now() < deadline, "not there in {secs} s: {events:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `sluice queue list --json` against the running daemon, one object per message.
    pub fn queue_list(&self) -> Vec<serde_json::Value> {
        let out = Command::new(BIN)
            .args(["queue", "list", "--json", "--config"])
            .arg(&self.config)
            .arg("--admin")
            .arg(self.admin.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "queue list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The stored message (trace header + body).
    pub fn raw_message(&self, id: &str) -> Vec<u8> {
        let (status, body) = self.http_get(&format!("/api/queue/{id}/message"));
        assert_eq!(status, 200, "message {id}");
        body
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A minimal blocking SMTP client for scripted exchanges over a real socket.
pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { reader, stream }
    }

    /// Connects from a given local address (any of 127.0.0.0/8 on Linux), as a client
    /// somewhere else would.
    pub fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> Client {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        sock.bind(&SocketAddr::new(source, 0).into()).unwrap();
        sock.connect(&addr.into()).unwrap();
        let stream: TcpStream = sock.into();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { reader, stream }
    }

    /// Connects, reads the greeting and says EHLO.
    pub fn ehlo(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr);
        assert_eq!(code(&c.reply().unwrap_or_default()), 220);
        assert_eq!(code(&c.cmd("EHLO client.test")), 250);
        c
    }

    /// MAIL FROM:<a@example.com>, RCPT TO:<b@example.org>, DATA; returns DATA's reply code.
    pub fn start_data(&mut self) -> u16 {
        self.cmd("MAIL FROM:<a@example.com>");
        self.cmd("RCPT TO:<b@example.org>");
        code(&self.cmd("DATA"))
    }

    /// A whole transaction with a `Message-ID` header; returns the reply after the data.
    pub fn send_message(&mut self, message_id: &str, body: &str) -> String {
        self.send_message_to(message_id, "b@example.org", body)
    }

    /// The same to a given recipient.
    pub fn send_message_to(&mut self, message_id: &str, rcpt: &str, body: &str) -> String {
        self.cmd("MAIL FROM:<a@example.com>");
        self.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert_eq!(code(&self.cmd("DATA")), 354);
        self.cmd(&format!("Message-ID: {message_id}\r\n\r\n{body}."))
    }

    /// Reads one (possibly multi-line) reply; `None` on EOF.
    pub fn reply(&mut self) -> Option<String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return if all.is_empty() { None } else { Some(all) },
                Ok(_) => {}
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                return Some(all);
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends a line and returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).unwrap();
        self.reply().unwrap_or_default()
    }

    /// True once the server has closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0))
    }
}

pub fn code(reply: &str) -> u16 {
    reply.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Runs a Python script with arguments, returning stdout; fails the test on a non-zero exit.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3").arg("-c").arg(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A certificate written by `sluice tls self-signed` (the CLI under test) into `dir`.
pub fn self_signed(dir: &Path, host: &str) {
    let out = Command::new(BIN)
        .args(["tls", "self-signed", "--host", host, "--host", "127.0.0.1", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("key.pem")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key is private");
    // Valid now and for a year, not for centuries: `openssl x509 -checkend N` fails when the
    // certificate expires within N seconds.
    let checkend = |secs: u64| {
        Command::new("openssl")
            .args(["x509", "-noout", "-checkend", &secs.to_string(), "-in"])
            .arg(dir.join("cert.pem"))
            .status()
            .unwrap()
            .success()
    };
    assert!(checkend(364 * 86_400), "expires within 364 days");
    assert!(!checkend(366 * 86_400), "valid for more than a year");
}

/// A size field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM` for the peak).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `sluice user add` with the password on stdin (never argv).
pub fn add_user(users: &Path, name: &str, password: &str, senders: &[&str]) {
    let args: Vec<String> = senders.iter().map(|s| format!("--sender={s}")).collect();
    add_user_with(users, name, password, &args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// `sluice user add NAME ARGS...` with the password on stdin.
pub fn add_user_with(users: &Path, name: &str, password: &str, args: &[&str]) {
    let cfg = users.with_file_name("user-cli.toml");
    std::fs::write(&cfg, format!("[auth]\nusers_file = \"{}\"\n", users.display())).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["user", "add", name, "--config"]).arg(&cfg).args(args);
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The events named `event` of a delivery log.
pub fn events<'a>(
    log: &'a [serde_json::Value],
    event: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    log.iter().filter(move |e| e["event"] == event)
}
