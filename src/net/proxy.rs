//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer in front of sluice
//! prefixes each connection with a header naming the client it accepted, so relay
//! decisions, per-IP limits, lockout, `Received:` and SPF see the client, not the balancer.
//!
//! Framing is sans-IO ([`framing`]: how many more bytes the header needs) so the reader takes
//! exactly the header off the socket and not one byte of what follows (an HTTP request, or
//! nothing at all for SMTP, whose client waits for the greeting); parsing is the `ppp`
//! crate's. Only peers in `proxy_networks` may send a header; anyone else is closed.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt};

/// A v1 header is at most this long, CRLF included (the specification's limit).
const V1_MAX: usize = 107;
/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v2 header taken: 16 bytes, addresses (at most 216 for AF_UNIX) and TLVs.
/// HAProxy's TLVs (ALPN, authority, unique id, SSL) fit easily; more is refused, not read.
const V2_MAX: usize = 1024;
/// What a proxy has to send its header in, from the connection's accept.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection on a PROXY listener was closed. Each maps to a `reason` label of
/// `sluice_proxy_refused_total` and a log line.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0} is not in proxy_networks")]
    NotAProxy(IpAddr),
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

impl ProxyError {
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::NotAProxy(_) => "not_a_proxy",
            ProxyError::Malformed(_) => "malformed",
            ProxyError::Timeout(_) => "timeout",
            ProxyError::Io(_) => "io",
        }
    }
}

/// One listener's PROXY settings: the networks its balancers connect from.
#[derive(Debug, Clone)]
pub struct ProxyPolicy {
    pub networks: Vec<IpNet>,
    pub timeout: Duration,
}

impl ProxyPolicy {
    pub fn new(networks: Vec<IpNet>) -> ProxyPolicy {
        ProxyPolicy { networks, timeout: HEADER_TIMEOUT }
    }

    /// The client `stream` speaks for: the header's source address, or `peer` itself for
    /// headers without one (v1 `UNKNOWN`, v2 `LOCAL` health checks, AF_UNSPEC).
    pub async fn client<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        peer: SocketAddr,
    ) -> Result<SocketAddr, ProxyError> {
        let ip = peer.ip().to_canonical();
        if !self.networks.iter().any(|n| n.contains(&ip)) {
            return Err(ProxyError::NotAProxy(ip));
        }
        let header = tokio::time::timeout(self.timeout, read_header(stream))
            .await
            .map_err(|_| ProxyError::Timeout(self.timeout))??;
        Ok(source(&header)?.unwrap_or(peer))
    }
}

/// What the header read so far needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Need {
    /// At least this many more bytes (v1 asks one at a time: its end is a CRLF).
    More(usize),
    /// `buf` is exactly one header.
    Done,
}

/// Sans-IO framing of a header whose first `buf.len()` bytes have been read.
pub fn framing(buf: &[u8]) -> Result<Need, ProxyError> {
    const V1_PREFIX: &[u8] = b"PROXY";
    let probe = buf.len().min(V1_PREFIX.len());
    if buf.len() < V1_PREFIX.len() {
        if V1_PREFIX.starts_with(buf) || V2_SIGNATURE.starts_with(buf) {
            return Ok(Need::More(V1_PREFIX.len() - buf.len()));
        }
        return Err(ProxyError::Malformed("no PROXY header".into()));
    }
    if &buf[..probe] == V1_PREFIX {
        if buf.ends_with(b"\r\n") {
            return Ok(Need::Done);
        }
        if buf.len() >= V1_MAX || buf.ends_with(b"\n") {
            return Err(ProxyError::Malformed("v1 header without CRLF in 107 bytes".into()));
        }
        return Ok(Need::More(1));
    }
    let sig = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig] != V2_SIGNATURE[..sig] {
        return Err(ProxyError::Malformed("no PROXY header".into()));
    }
    if buf.len() < 16 {
        return Ok(Need::More(16 - buf.len()));
    }
    let total = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if total > V2_MAX {
        return Err(ProxyError::Malformed(format!("v2 header of {total} bytes")));
    }
    Ok(if buf.len() < total { Need::More(total - buf.len()) } else { Need::Done })
}

/// Reads exactly one header off `stream`.
async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, ProxyError> {
    let mut buf = Vec::with_capacity(64);
    loop {
        match framing(&buf)? {
            Need::Done => return Ok(buf),
            Need::More(n) => {
                let at = buf.len();
                buf.resize(at + n, 0);
                stream.read_exact(&mut buf[at..]).await?;
            }
        }
    }
}

/// The source address of one complete header; None when it carries none.
pub fn source(header: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    use ppp::HeaderResult;
    use ppp::{v1, v2};
    let bad = |e: &dyn std::fmt::Debug| {
        let mut why = format!("{e:?}");
        why.truncate(120);
        ProxyError::Malformed(why)
    };
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            v1::Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (v2::Command::Local, _) => None,
            (_, v2::Addresses::IPv4(a)) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            (_, v2::Addresses::IPv6(a)) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            (_, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
        }),
        HeaderResult::V1(Err(e)) => Err(bad(&e)),
        HeaderResult::V2(Err(e)) => Err(bad(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_all(input: &[u8]) -> Result<usize, ProxyError> {
        let mut n = 0;
        loop {
            match framing(&input[..n])? {
                Need::Done => return Ok(n),
                Need::More(k) => {
                    n += k;
                    if n > input.len() {
                        return Err(ProxyError::Malformed("ran out".into()));
                    }
                }
            }
        }
    }

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    #[test]
    fn v1_headers_end_at_their_crlf_and_give_the_source() {
        let input = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\nEHLO x\r\n";
        let n = frame_all(input).unwrap();
        assert_eq!(&input[n..], b"EHLO x\r\n");
        assert_eq!(source(&input[..n]).unwrap(), Some("192.0.2.7:40000".parse().unwrap()));
        let v6 = b"PROXY TCP6 2001:db8::1 ::1 40000 25\r\n";
        assert_eq!(source(v6).unwrap(), Some("[2001:db8::1]:40000".parse().unwrap()));
        assert_eq!(frame_all(b"PROXY UNKNOWN\r\n").unwrap(), 15);
        assert_eq!(source(b"PROXY UNKNOWN\r\n").unwrap(), None);
    }

    #[test]
    fn v2_headers_are_framed_by_their_length_and_local_means_the_peer() {
        let mut addrs = vec![198, 51, 100, 9, 127, 0, 0, 1, 0x9c, 0x40, 0, 25];
        addrs.extend_from_slice(&[0x04, 0, 2, b'i', b'd']); // a TLV (unique id)
        let mut input = v2(1, 0x11, &addrs);
        let len = input.len();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(frame_all(&input).unwrap(), len);
        assert_eq!(source(&input[..len]).unwrap(), Some("198.51.100.9:40000".parse().unwrap()));
        let local = v2(0, 0x00, &[]);
        assert_eq!(frame_all(&local).unwrap(), 16);
        assert_eq!(source(&local).unwrap(), None);
    }

    #[test]
    fn anything_else_is_malformed_before_more_is_read() {
        for bad in [
            &b"EHLO client.example\r\n"[..],
            b"GET / HTTP/1.1\r\n",
            b"\r\n\r\n\0\r\nQUIX\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        ] {
            assert!(matches!(frame_all(bad), Err(ProxyError::Malformed(_))), "{bad:?}");
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(frame_all(&long), Err(ProxyError::Malformed(_))));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(framing(&huge), Err(ProxyError::Malformed(_))));
        // Framed but nonsense inside: the parser refuses it.
        assert!(source(b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n").is_err());
        assert!(source(&v2(1, 0x11, &[1, 2, 3])).is_err());
    }
}
