//! An authoritative DNS server on 127.0.0.1 for tests, built on hickory-proto: serves MX, A,
//! AAAA and TXT from a table, answers NXDOMAIN for unknown names and SERVFAIL where told to.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

#[derive(Default)]
struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
    /// Names that exist (so a missing type is NOERROR/no data, not NXDOMAIN).
    names: HashSet<String>,
    servfail: HashSet<String>,
    /// (name, type) pairs answered SERVFAIL (a DNS timeout, as fast as a test wants it).
    servfail_types: HashSet<(String, RecordType)>,
    servfail_all: bool,
    queries: usize,
}

pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
}

/// The lookup key of a name: its presentation form (labels with spaces and the like escaped
/// the way hickory prints a query name), lower case, fully qualified.
/// The key of a name from a query: its labels as they are (`to_ascii` escapes ':', '/' and
/// spaces, which [`key`] would escape again).
fn name_key(name: &Name) -> String {
    let labels: Vec<String> =
        name.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
    key(&labels.join("."))
}

fn key(name: &str) -> String {
    let plain = name.trim_end_matches('.');
    match Name::from_labels(plain.split('.').map(str::as_bytes)) {
        Ok(n) => format!("{}.", n.to_ascii().trim_end_matches('.')).to_ascii_lowercase(),
        Err(_) => format!("{plain}.").to_ascii_lowercase(),
    }
}

impl TestDns {
    pub fn start() -> TestDns {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let z = zone.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                let reply = answer(&z, &query);
                if let Ok(bytes) = reply.to_vec() {
                    let _ = sock.send_to(&bytes, peer);
                }
            }
        });
        TestDns { addr, zone }
    }

    fn add(&self, name: &str, rdata: RData) {
        let mut z = self.zone.lock().unwrap();
        z.names.insert(key(name));
        z.records.entry((key(name), rdata.record_type())).or_default().push(rdata);
    }

    pub fn mx(&self, domain: &str, preference: u16, exchange: &str) -> &Self {
        let ex = Name::from_ascii(format!("{}.", exchange.trim_end_matches('.'))).unwrap();
        self.add(domain, RData::MX(MX::new(preference, ex)));
        self
    }

    /// RFC 7505 null MX.
    pub fn null_mx(&self, domain: &str) -> &Self {
        self.add(domain, RData::MX(MX::new(0, Name::root())));
        self
    }

    pub fn a(&self, name: &str, ip: &str) -> &Self {
        let rdata = match ip.parse::<std::net::IpAddr>().unwrap() {
            std::net::IpAddr::V4(v4) => RData::A(A(v4)),
            std::net::IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        self.add(name, rdata);
        self
    }

    /// Any record (the RFC 7208 suite brings PTR, CNAME and TXT records of several strings).
    pub fn record(&self, name: &str, rdata: RData) -> &Self {
        self.add(name, rdata);
        self
    }

    /// Queries of one type for `name` get SERVFAIL; the name exists for other types.
    pub fn servfail_type(&self, name: &str, t: RecordType) -> &Self {
        let mut z = self.zone.lock().unwrap();
        z.names.insert(key(name));
        z.servfail_types.insert((key(name), t));
        self
    }

    /// A TXT record; a value over 255 bytes is split into strings, as zone files do.
    pub fn txt(&self, name: &str, value: &str) -> &Self {
        let strings = value.as_bytes().chunks(255).map(|c| String::from_utf8_lossy(c).into_owned());
        self.add(name, RData::TXT(TXT::new(strings.collect())));
        self
    }

    /// Removes every record of a name (it stays existent: NOERROR, no data).
    pub fn clear(&self, name: &str) -> &Self {
        self.zone.lock().unwrap().records.retain(|(n, _), _| *n != key(name));
        self
    }

    pub fn servfail(&self, name: &str) -> &Self {
        self.zone.lock().unwrap().servfail.insert(key(name));
        self
    }

    /// Every query gets SERVFAIL: DNS is "down" (lookups are temporary failures).
    pub fn servfail_everything(&self) -> &Self {
        self.zone.lock().unwrap().servfail_all = true;
        self
    }

    pub fn queries(&self) -> usize {
        self.zone.lock().unwrap().queries
    }

    /// The TOML that points sluice at this server.
    pub fn config(&self) -> String {
        format!("[dns]\nnameservers = [\"{}\"]\n", self.addr)
    }
}

fn answer(zone: &Mutex<Zone>, q: &Message) -> Message {
    let mut z = zone.lock().unwrap();
    z.queries += 1;
    let mut m = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
    m.metadata.authoritative = true;
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    let Some(query) = q.queries.first() else {
        m.metadata.response_code = ResponseCode::FormErr;
        return m;
    };
    m.add_query(query.clone());
    let name = name_key(query.name());
    if z.servfail_all
        || z.servfail.contains(&name)
        || z.servfail_types.contains(&(name.clone(), query.query_type()))
    {
        m.metadata.response_code = ResponseCode::ServFail;
        return m;
    }
    // An alias answers with its CNAME and, when known here, the target's records (one level).
    if query.query_type() != RecordType::CNAME
        && !z.records.contains_key(&(name.clone(), query.query_type()))
        && let Some(cnames) = z.records.get(&(name.clone(), RecordType::CNAME))
    {
        for c in cnames {
            m.add_answer(Record::from_rdata(query.name().clone(), 60, c.clone()));
            if let RData::CNAME(target) = c
                && let Some(rdatas) = z.records.get(&(name_key(&target.0), query.query_type()))
            {
                for r in rdatas {
                    m.add_answer(Record::from_rdata(target.0.clone(), 60, r.clone()));
                }
            }
        }
        return m;
    }
    match z.records.get(&(name.clone(), query.query_type())) {
        Some(rdatas) => {
            for r in rdatas {
                m.add_answer(Record::from_rdata(query.name().clone(), 60, r.clone()));
            }
        }
        None if z.names.contains(&name) => {} // NOERROR, no data
        None => m.metadata.response_code = ResponseCode::NXDomain,
    }
    m
}
