//! A scriptable SMTP sink on 127.0.0.1: accepts, or answers scripted replies per recipient,
//! drops connections mid-DATA, advertises CHUNKING or not, and records what it received.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct Behavior {
    /// Replies to RCPT for an address, one per attempt; the last one repeats. Default: 250.
    pub rcpt: HashMap<String, Vec<String>>,
    pub chunking: bool,
    pub pipelining: bool,
    /// Drop the connection in the middle of the next N DATA transfers.
    pub drop_in_data: usize,
    /// Wait this long before answering the end of data (a slow server).
    pub end_delay: Duration,
}

#[derive(Clone, Debug)]
pub struct Received {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    pub bdat: bool,
    pub at: Instant,
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
                st.lock().unwrap().connections += 1;
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

    /// Waits until the sink holds `n` messages (or panics after `secs`).
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
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    w.write_all(b"220 sink.test ESMTP\r\n")?;
    let (mut from, mut rcpts, mut chunks) = (String::new(), Vec::new(), Vec::new());
    let mut carried = 0usize;
    let result =
        serve_inner(&mut r, &mut w, b, st, &mut from, &mut rcpts, &mut chunks, &mut carried);
    let mut s = st.lock().unwrap();
    s.per_connection.push(carried & !QUIT_SEEN);
    if carried & QUIT_SEEN == 0 {
        s.active -= 1;
    }
    result
}

/// Flag in the per-connection counter: `active` was already decremented at QUIT.
const QUIT_SEEN: usize = 1 << 40;

#[allow(clippy::too_many_arguments)]
fn serve_inner(
    r: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
    b: &Behavior,
    st: &Mutex<State>,
    from: &mut String,
    rcpts: &mut Vec<String>,
    chunks: &mut Vec<u8>,
    carried: &mut usize,
) -> std::io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            let mut caps = String::from("250-sink.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n");
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
            *from = cmd[10..].split('>').next().unwrap_or("").trim_start_matches('<').to_string();
            rcpts.clear();
            chunks.clear();
            w.write_all(b"250 2.1.0 ok\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            let addr = cmd[8..].split('>').next().unwrap_or("").trim_start_matches('<').to_string();
            let reply = {
                let mut s = st.lock().unwrap();
                let n = s.attempts.entry(addr.clone()).or_default();
                *n += 1;
                match b.rcpt.get(&addr) {
                    Some(seq) => seq[(*n - 1).min(seq.len() - 1)].clone(),
                    None => "250 2.1.5 ok".to_string(),
                }
            };
            if reply.starts_with('2') {
                rcpts.push(addr);
            }
            w.write_all(format!("{reply}\r\n").as_bytes())?;
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                w.write_all(b"554 5.5.1 no valid recipients\r\n")?;
                continue;
            }
            w.write_all(b"354 go\r\n")?;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if r.read_until(b'\n', &mut l)? == 0 {
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
            std::thread::sleep(b.end_delay);
            st.lock().unwrap().messages.push(Received {
                mail_from: from.clone(),
                rcpts: rcpts.clone(),
                data,
                bdat: false,
                at: Instant::now(),
            });
            *carried += 1;
            w.write_all(b"250 2.0.0 queued\r\n")?;
        } else if upper.starts_with("BDAT ") {
            let mut parts = cmd[5..].split_ascii_whitespace();
            let n: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let last = parts.next().is_some_and(|p| p.eq_ignore_ascii_case("LAST"));
            let mut chunk = vec![0; n];
            r.read_exact(&mut chunk)?;
            chunks.extend_from_slice(&chunk);
            if rcpts.is_empty() {
                w.write_all(b"554 5.5.1 no valid recipients\r\n")?;
            } else if last {
                let data = std::mem::take(chunks);
                st.lock().unwrap().messages.push(Received {
                    mail_from: from.clone(),
                    rcpts: rcpts.clone(),
                    data,
                    bdat: true,
                    at: Instant::now(),
                });
                *carried += 1;
                w.write_all(b"250 2.0.0 queued\r\n")?;
            } else {
                w.write_all(b"250 2.0.0 chunk ok\r\n")?;
            }
        } else if upper == "RSET" {
            rcpts.clear();
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
