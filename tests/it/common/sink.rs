//! A scriptable SMTP sink on 127.0.0.1: accepts, or answers scripted replies per recipient,
//! drops connections mid-DATA, advertises CHUNKING or not, offers STARTTLS (rustls, a
//! self-signed certificate made at test time) and can require it and AUTH, and records what it
//! received.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A self-signed certificate for `names` written to `dir`: the server config and the path of
/// the certificate (to trust it as a CA).
pub fn tls_identity(dir: &Path, names: &[&str]) -> (Arc<ServerConfig>, PathBuf) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let (cert, key) = sluice::tls::self_signed(&names, 1).unwrap();
    let tag = names.join("_").replace(['.', ':'], "-");
    let (c, k) = (dir.join(format!("{tag}.crt")), dir.join(format!("{tag}.key")));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (sluice::tls::server_config(&c, &k).unwrap(), c)
}

/// The sink's connection: plaintext, or TLS after STARTTLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
    Gone,
}

impl Conn {
    fn upgrade(&mut self, cfg: Arc<ServerConfig>) -> std::io::Result<()> {
        let Conn::Plain(tcp) = std::mem::replace(self, Conn::Gone) else {
            return Err(std::io::ErrorKind::InvalidInput.into());
        };
        let sc = ServerConnection::new(cfg).map_err(std::io::Error::other)?;
        let mut tls = StreamOwned::new(sc, tcp);
        // Run the handshake now so a failure shows here.
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        *self = Conn::Tls(Box::new(tls));
        Ok(())
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
            Conn::Gone => Ok(0),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
            Conn::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
            Conn::Gone => Ok(()),
        }
    }
}

/// One RCPT as a [`Behavior::script`] sees it.
pub struct RcptSeen<'a> {
    /// RCPT commands received so far, this one included (across all connections).
    pub n: usize,
    pub rcpt: &'a str,
    /// The client's address.
    pub peer: Option<SocketAddr>,
}

/// Answers a RCPT (None: as `rcpt` says, else 250): a provider throttling by time or count.
pub type Script = Arc<dyn Fn(&RcptSeen<'_>) -> Option<String> + Send + Sync>;

#[derive(Clone, Default)]
pub struct Behavior {
    /// Scripted RCPT replies, ahead of `rcpt`.
    pub script: Option<Script>,
    /// Replies to RCPT for an address, one per attempt; the last one repeats. Default: 250.
    pub rcpt: HashMap<String, Vec<String>>,
    pub chunking: bool,
    pub pipelining: bool,
    /// Drop the connection in the middle of the next N DATA transfers.
    pub drop_in_data: usize,
    /// Wait this long before answering the end of data (a slow server).
    pub end_delay: Duration,
    /// Offer STARTTLS with this identity.
    pub tls: Option<Arc<ServerConfig>>,
    /// Refuse MAIL before STARTTLS (530 5.7.0).
    pub require_tls: bool,
    /// Require AUTH (PLAIN or LOGIN, offered after TLS only) with these credentials.
    pub auth: Option<(String, String)>,
    /// Advertise DSN (RFC 3461).
    pub dsn: bool,
    /// Close the connection right after accepting a message (a server with a short idle timeout).
    pub hang_up_after_message: bool,
}

#[derive(Clone, Debug)]
pub struct Received {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    pub bdat: bool,
    pub at: Instant,
    pub tls: bool,
    /// The user that authenticated, if any.
    pub auth_user: Option<String>,
    /// Parameters after MAIL FROM:<...>, and after each accepted RCPT TO:<...>.
    pub mail_params: String,
    pub rcpt_params: Vec<String>,
    /// The client's address (the source it bound) and the name it gave in EHLO/HELO.
    pub peer: Option<SocketAddr>,
    pub ehlo: String,
}

#[derive(Default)]
struct State {
    messages: Vec<Received>,
    connections: usize,
    attempts: HashMap<String, usize>,
    drops_left: usize,
    active: usize,
    max_active: usize,
    /// Messages carried by each closed connection.
    per_connection: Vec<usize>,
    /// Failed AUTH attempts.
    auth_failures: usize,
    /// DATA transfers received whole (counted before `end_delay`, i.e. before the reply).
    data_ends: usize,
    /// RCPT commands received, and when each connection was accepted (Unix ms).
    rcpt_commands: usize,
    connected_ms: Vec<u64>,
}

pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Sink {
    pub fn start(b: Behavior) -> Sink {
        Self::start_on("127.0.0.1:0".parse().unwrap(), b)
    }

    /// A sink on a given loopback address (e.g. 127.0.0.3 with another sink's port, to play a
    /// second MX host).
    pub fn start_on(addr: SocketAddr, b: Behavior) -> Sink {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let state =
            Arc::new(Mutex::new(State { drops_left: b.drop_in_data, ..Default::default() }));
        let st = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                {
                    let mut s = st.lock().unwrap();
                    s.connections += 1;
                    s.connected_ms.push(unix_ms());
                }
                let (st, b) = (st.clone(), b.clone());
                std::thread::spawn(move || {
                    {
                        let mut s = st.lock().unwrap();
                        s.active += 1;
                        s.max_active = s.max_active.max(s.active);
                    }
                    let _ = serve(stream, &b, &st);
                });
            }
        });
        Sink { addr, state }
    }

    /// Configuration that sends all mail to this sink (plain SMTP), retrying after 1 s, with
    /// `extra` TOML appended.
    pub fn route(&self, extra: &str) -> String {
        format!(
            "[[route]]\ndomains = [\"*\"]\nsmarthost = \"{}\"\ntls = \"disabled\"\n[queue]\nretry = [\"1s\"]\n[delivery]\nscan_interval = \"200ms\"\n{extra}",
            self.addr
        )
    }

    pub fn messages(&self) -> Vec<Received> {
        self.state.lock().unwrap().messages.clone()
    }

    /// Most connections open at once.
    pub fn max_concurrent(&self) -> usize {
        self.state.lock().unwrap().max_active
    }

    /// Messages each finished connection carried.
    pub fn per_connection(&self) -> Vec<usize> {
        self.state.lock().unwrap().per_connection.clone()
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// When each connection was accepted (Unix ms), in order.
    pub fn connected_ms(&self) -> Vec<u64> {
        self.state.lock().unwrap().connected_ms.clone()
    }

    pub fn auth_failures(&self) -> usize {
        self.state.lock().unwrap().auth_failures
    }

    /// Waits until the sink holds `n` messages (or panics after `secs`).
    /// Waits until `n` DATA transfers have arrived whole (their reply may still be pending).
    pub fn wait_data_ends(&self, n: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.state.lock().unwrap().data_ends < n {
            assert!(Instant::now() < deadline, "{n} DATA transfers never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn wait_for(&self, n: usize, secs: u64) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let m = self.messages();
            if m.len() >= n {
                return m;
            }
            assert!(Instant::now() < deadline, "sink got {} of {n} messages", m.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn serve(stream: TcpStream, b: &Behavior, st: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let peer = stream.peer_addr().ok();
    let mut r = BufReader::new(Conn::Plain(stream));
    r.get_mut().write_all(b"220 sink.test ESMTP\r\n")?;
    let mut carried = 0usize;
    let result = serve_inner(&mut r, b, st, &mut carried, peer);
    let mut s = st.lock().unwrap();
    s.per_connection.push(carried & !QUIT_SEEN);
    if carried & QUIT_SEEN == 0 {
        s.active -= 1;
    }
    result
}

/// Flag in the per-connection counter: `active` was already decremented at QUIT.
const QUIT_SEEN: usize = 1 << 40;

/// The transaction being received.
#[derive(Default)]
struct Txn {
    from: String,
    rcpts: Vec<String>,
    mail_params: String,
    rcpt_params: Vec<String>,
    peer: Option<SocketAddr>,
    ehlo: String,
}

impl Txn {
    fn received(&self, data: Vec<u8>, bdat: bool, tls: bool, user: &Option<String>) -> Received {
        Received {
            mail_from: self.from.clone(),
            rcpts: self.rcpts.clone(),
            data,
            bdat,
            at: Instant::now(),
            tls,
            auth_user: user.clone(),
            mail_params: self.mail_params.clone(),
            rcpt_params: self.rcpt_params.clone(),
            peer: self.peer,
            ehlo: self.ehlo.clone(),
        }
    }
}

/// Writes a reply on the connection under the reader.
fn say(r: &mut BufReader<Conn>, text: &[u8]) -> std::io::Result<()> {
    let w = r.get_mut();
    w.write_all(text)?;
    w.flush()
}

/// Reads one line (AUTH continuation).
fn read_line(r: &mut BufReader<Conn>) -> std::io::Result<String> {
    let mut l = String::new();
    r.read_line(&mut l)?;
    Ok(l.trim_end().to_string())
}

fn decode(b64: &str) -> String {
    String::from_utf8_lossy(&B64.decode(b64.trim()).unwrap_or_default()).into_owned()
}

fn serve_inner(
    r: &mut BufReader<Conn>,
    b: &Behavior,
    st: &Mutex<State>,
    carried: &mut usize,
    peer: Option<SocketAddr>,
) -> std::io::Result<()> {
    let mut t = Txn { peer, ..Txn::default() };
    let mut chunks = Vec::new();
    let params = |cmd: &str| cmd.split_once('>').map_or("", |(_, p)| p.trim()).to_string();
    let mut tls = false;
    let mut user: Option<String> = None;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let w = &mut Writer(r);
        if upper == "STARTTLS" && b.tls.is_some() && !tls {
            say(w.0, b"220 2.0.0 go ahead\r\n")?;
            // Whatever the client pipelined after STARTTLS is discarded (RFC 3207 5).
            let n = w.0.buffer().len();
            w.0.consume(n);
            w.0.get_mut().upgrade(b.tls.clone().unwrap())?;
            tls = true;
            continue;
        }
        if upper.starts_with("AUTH ") && tls && user.is_none() {
            let Some((want_user, want_pass)) = &b.auth else {
                w.write_all(b"503 5.5.1 no AUTH here\r\n")?;
                continue;
            };
            let mut words = cmd.split_ascii_whitespace().skip(1);
            let mech = words.next().unwrap_or("").to_ascii_uppercase();
            let (u, p) = match mech.as_str() {
                "PLAIN" => {
                    let token = match words.next() {
                        Some(t) => t.to_string(),
                        None => {
                            say(w.0, b"334 \r\n")?;
                            read_line(w.0)?
                        }
                    };
                    let d = decode(&token);
                    let mut f = d.split('\0').skip(1);
                    (f.next().unwrap_or("").to_string(), f.next().unwrap_or("").to_string())
                }
                "LOGIN" => {
                    say(w.0, b"334 VXNlcm5hbWU6\r\n")?;
                    let u = decode(&read_line(w.0)?);
                    say(w.0, b"334 UGFzc3dvcmQ6\r\n")?;
                    (u, decode(&read_line(w.0)?))
                }
                _ => {
                    w.write_all(b"504 5.5.4 mechanism not supported\r\n")?;
                    continue;
                }
            };
            if &u == want_user && &p == want_pass {
                user = Some(u);
                w.write_all(b"235 2.7.0 authenticated\r\n")?;
            } else {
                st.lock().unwrap().auth_failures += 1;
                w.write_all(b"535 5.7.8 authentication credentials invalid\r\n")?;
            }
            continue;
        }
        if upper.starts_with("MAIL FROM:") {
            if b.require_tls && !tls {
                w.write_all(b"530 5.7.0 must issue a STARTTLS command first\r\n")?;
                continue;
            }
            if b.auth.is_some() && user.is_none() {
                w.write_all(b"530 5.7.0 authentication required\r\n")?;
                continue;
            }
        }
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            t.ehlo = cmd.get(5..).unwrap_or("").trim().to_string();
        }
        if upper.starts_with("EHLO") {
            let mut caps = String::from("250-sink.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n");
            if b.tls.is_some() && !tls {
                caps.push_str("250-STARTTLS\r\n");
            }
            if b.auth.is_some() && tls {
                caps.push_str("250-AUTH PLAIN LOGIN\r\n");
            }
            if b.dsn {
                caps.push_str("250-DSN\r\n");
            }
            if b.pipelining {
                caps.push_str("250-PIPELINING\r\n");
            }
            if b.chunking {
                caps.push_str("250-CHUNKING\r\n");
            }
            caps.push_str("250 SIZE 100000000\r\n");
            w.write_all(caps.as_bytes())?;
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            w.write_all(b"250 ok\r\n")?;
        } else if upper.starts_with("MAIL FROM:") {
            t = Txn {
                from: cmd[10..].split('>').next().unwrap_or("").trim_start_matches('<').to_string(),
                mail_params: params(&cmd),
                peer: t.peer,
                ehlo: std::mem::take(&mut t.ehlo),
                ..Txn::default()
            };
            chunks.clear();
            w.write_all(b"250 2.1.0 ok\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            let addr = cmd[8..].split('>').next().unwrap_or("").trim_start_matches('<').to_string();
            let reply = {
                let mut s = st.lock().unwrap();
                s.rcpt_commands += 1;
                let seen = RcptSeen { n: s.rcpt_commands, rcpt: &addr, peer: t.peer };
                let scripted = b.script.as_ref().and_then(|f| f(&seen));
                let n = s.attempts.entry(addr.clone()).or_default();
                *n += 1;
                match (scripted, b.rcpt.get(&addr)) {
                    (Some(r), _) => r,
                    (None, Some(seq)) => seq[(*n - 1).min(seq.len() - 1)].clone(),
                    (None, None) => "250 2.1.5 ok".to_string(),
                }
            };
            if reply.starts_with('2') {
                t.rcpts.push(addr);
                t.rcpt_params.push(params(&cmd));
            }
            w.write_all(format!("{reply}\r\n").as_bytes())?;
        } else if upper == "DATA" {
            if t.rcpts.is_empty() {
                w.write_all(b"554 5.5.1 no valid recipients\r\n")?;
                continue;
            }
            w.write_all(b"354 go\r\n")?;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if w.0.read_until(b'\n', &mut l)? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                let drop_now = {
                    let mut s = st.lock().unwrap();
                    let drop = s.drops_left > 0 && data.len() > 50;
                    if drop {
                        s.drops_left -= 1;
                    }
                    drop
                };
                if drop_now {
                    return Ok(()); // connection dropped mid-DATA
                }
                // RFC 5321 4.5.2: a leading dot is removed.
                data.extend_from_slice(l.strip_prefix(b".").unwrap_or(&l));
            }
            st.lock().unwrap().data_ends += 1;
            std::thread::sleep(b.end_delay);
            st.lock().unwrap().messages.push(t.received(data, false, tls, &user));
            *carried += 1;
            w.write_all(b"250 2.0.0 queued\r\n")?;
            if b.hang_up_after_message {
                return Ok(());
            }
        } else if upper.starts_with("BDAT ") {
            let mut parts = cmd[5..].split_ascii_whitespace();
            let n: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let last = parts.next().is_some_and(|p| p.eq_ignore_ascii_case("LAST"));
            let mut chunk = vec![0; n];
            w.0.read_exact(&mut chunk)?;
            chunks.extend_from_slice(&chunk);
            if t.rcpts.is_empty() {
                w.write_all(b"554 5.5.1 no valid recipients\r\n")?;
            } else if last {
                let data = std::mem::take(&mut chunks);
                st.lock().unwrap().messages.push(t.received(data, true, tls, &user));
                *carried += 1;
                w.write_all(b"250 2.0.0 queued\r\n")?;
            } else {
                w.write_all(b"250 2.0.0 chunk ok\r\n")?;
            }
        } else if upper == "RSET" {
            t.rcpts.clear();
            t.rcpt_params.clear();
            w.write_all(b"250 ok\r\n")?;
        } else if upper == "QUIT" {
            // The connection counts as closed from here: the client may open the next one as soon
            // as it reads 221.
            st.lock().unwrap().active -= 1;
            *carried |= QUIT_SEEN;
            w.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else {
            w.write_all(b"500 what\r\n")?;
        }
    }
}

/// Replies go to the connection under the reader, flushed at once (TLS buffers records).
struct Writer<'a>(&'a mut BufReader<Conn>);

impl Writer<'_> {
    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        say(self.0, b)
    }
}
