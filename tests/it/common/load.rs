//! Concurrent SMTP load for crash tests: every message carries a checksum of its body, and each
//! one the server answered 250 is recorded, so a restart can be checked against what was promised.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Sluice;

/// A message the server acknowledged: its Message-ID and the CRC-32 of its body text.
#[derive(Clone, Debug)]
pub struct Acked {
    pub message_id: String,
    pub crc: u32,
}

/// Runs `sessions` clients until `stop` is set or the server dies; returns what was acknowledged.
pub fn run_load(addr: SocketAddr, sessions: usize, tag: &str, stop: Arc<AtomicBool>) -> Vec<Acked> {
    run_load_into(addr, sessions, tag, stop, Arc::new(Mutex::new(Vec::new())))
}

/// Starts `sessions` loading clients and returns once `target` messages were acknowledged: the
/// event a crash test kills on, instead of a sleep. The load goes on until `stop` is set; join
/// the handle for everything acknowledged. Panics (with `log`) if that never happens in 60 s.
pub fn load_until(
    addr: SocketAddr,
    sessions: usize,
    tag: &str,
    target: usize,
    log: impl Fn() -> String,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<Acked>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Mutex::new(Vec::new()));
    let (st, tag, sh) = (stop.clone(), tag.to_string(), shared.clone());
    let handle = std::thread::spawn(move || run_load_into(addr, sessions, &tag, st, sh));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while shared.lock().unwrap().len() < target {
        assert!(
            std::time::Instant::now() < deadline,
            "{target} acknowledgements never came:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    (stop, handle)
}

/// The same, recording into `acked` as it goes, so a test can act on an event ("N messages
/// acknowledged") instead of a sleep.
pub fn run_load_into(
    addr: SocketAddr,
    sessions: usize,
    tag: &str,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
) -> Vec<Acked> {
    let threads: Vec<_> = (0..sessions)
        .map(|t| {
            let (acked, stop, tag) = (acked.clone(), stop.clone(), tag.to_string());
            std::thread::spawn(move || {
                let _ = client_loop(addr, t, &tag, &stop, &acked);
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    acked.lock().unwrap().clone()
}

fn client_loop(
    addr: SocketAddr,
    t: usize,
    tag: &str,
    stop: &AtomicBool,
    acked: &Mutex<Vec<Acked>>,
) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    let mut reply = |reader: &mut BufReader<TcpStream>| -> std::io::Result<u16> {
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                return Ok(line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0));
            }
        }
    };
    reply(&mut reader)?;
    stream.write_all(b"EHLO load\r\n")?;
    reply(&mut reader)?;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let message_id = format!("<{tag}-{t}-{n}@crash.test>");
        // Bodies of varying size (1–12 KB) with content that differs per message.
        let lines = 10 + (n as usize * 7 + t * 13) % 150;
        let mut text = String::with_capacity(lines * 80);
        for i in 0..lines {
            text.push_str(&format!("{tag} {t} {n} line {i} {}\r\n", "abcdefghij".repeat(6)));
        }
        let crc = crc32fast::hash(text.as_bytes());
        let msg = format!(
            "MAIL FROM:<load@example.com>\r\nRCPT TO:<sink@example.org>\r\nDATA\r\nMessage-ID: {message_id}\r\nX-Check: {crc}\r\n\r\n{text}.\r\n"
        );
        stream.write_all(msg.as_bytes())?;
        let codes =
            [reply(&mut reader)?, reply(&mut reader)?, reply(&mut reader)?, reply(&mut reader)?];
        if codes == [250, 250, 354, 250] {
            acked.lock().unwrap().push(Acked { message_id, crc });
        } else if codes[3] >= 400 {
            return Ok(());
        }
    }
    Ok(())
}

/// Checks that every acknowledged message is queued; with `bodies`, also fetches and verifies the
/// body of the newest 500 (those acknowledged closest to the crash, where loss would be) and of
/// every 25th older one. Returns what is missing or damaged (empty = nothing lost).
pub fn missing(s: &Sluice, acked: &[Acked], bodies: bool) -> Vec<String> {
    let list = s.queue_list();
    let ids: std::collections::HashMap<String, String> = list
        .iter()
        .map(|m| {
            (
                m["message_id"].as_str().unwrap_or("").to_string(),
                m["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut bad = Vec::new();
    let newest = acked.len().saturating_sub(500);
    for (i, a) in acked.iter().enumerate() {
        let full = bodies && (i >= newest || i % 25 == 0);
        let Some(qid) = ids.get(&a.message_id) else {
            bad.push(format!("{} missing", a.message_id));
            continue;
        };
        if full {
            let raw = s.raw_message(qid);
            let text = String::from_utf8_lossy(&raw);
            let ok = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
                head.contains(&format!("X-Check: {}", a.crc))
                    && crc32fast::hash(body.as_bytes()) == a.crc
            });
            if !ok {
                bad.push(format!("{} damaged", a.message_id));
            }
        }
    }
    bad
}

/// Fails the test if anything acknowledged was lost or damaged.
pub fn assert_none_lost(lost: &[String]) {
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost or damaged: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}

/// A pseudo-random number from the clock, printed by callers so a failing round can be retraced.
pub fn jitter(max: u64) -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
            as u64;
    (nanos.wrapping_mul(6364136223846793005) >> 33) % max.max(1)
}
