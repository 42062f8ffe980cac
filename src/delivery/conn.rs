//! One outbound SMTP connection driving the sans-IO client: connect and greet once, then send
//! any number of messages, then QUIT. Each wait has its RFC 5321 4.5.3.2 timeout. STARTTLS and
//! AUTH happen while opening, as the hop's [`HopPolicy`] says.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::delivery_error::DeliveryError;
use crate::metrics;
use crate::proto::smtp::Reply;
use crate::proto::smtp::client::{
    Client, ClientEvent, ClientFailure, Outbound, Phase, SessionPolicy, TlsPolicy,
};
use crate::stream::{Stream, write_all_bufs};

/// How to talk to one next hop: STARTTLS and AUTH policy, and the TLS client configuration
/// (verifying for `required`, opportunistic otherwise).
#[derive(Debug, Clone)]
pub struct HopPolicy {
    pub session: SessionPolicy,
    pub tls: Arc<ClientConfig>,
}

impl Default for HopPolicy {
    fn default() -> Self {
        HopPolicy { session: SessionPolicy::default(), tls: crate::tls::opportunistic_client() }
    }
}

/// Where to connect: `address` is `host:port` or `ip:port`; `name` is the host name the TLS
/// certificate must match (the smart host's or the MX host's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub address: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
    pub data_end: Duration,
}

/// A TCP connection to `address` (`ip:port` or `host:port`), from the local address `bind`
/// when one is given (an egress source): only peers of its address family are tried.
async fn connect_from(address: &str, bind: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(local) = bind else { return TcpStream::connect(address).await };
    let mut last = None;
    for peer in tokio::net::lookup_host(address).await? {
        if peer.is_ipv4() != local.is_ipv4() {
            continue;
        }
        let socket = if local.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.bind(SocketAddr::new(local, 0))?;
        match socket.connect(peer).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        let family = if local.is_ipv4() { "IPv4" } else { "IPv6" };
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("no {family} address to reach from source address {local}"),
        )
    }))
}

pub struct Connection {
    stream: Stream<TlsStream<TcpStream>>,
    tls: Arc<ClientConfig>,
    name: String,
    client: Client,
    buf: Vec<u8>,
    timeouts: Timeouts,
    /// The address connected to, for logs and bounces.
    pub peer: String,
    /// Messages sent over this connection.
    pub sent: usize,
}

impl Connection {
    /// The host name connected to (the MX host, or the smart host).
    pub fn host(&self) -> &str {
        &self.name
    }

    /// Connects and waits until the server is ready (greeting, EHLO, STARTTLS and AUTH as the
    /// policy says). With opportunistic TLS, a failed handshake is retried once in plaintext
    /// (RFC 7435: never worse than no TLS).
    pub async fn open(
        target: &Target,
        bind: Option<IpAddr>,
        helo: &str,
        t: &Timeouts,
        policy: &HopPolicy,
    ) -> Result<Connection, DeliveryError> {
        match Self::open_with(target, bind, helo, t, policy, policy.session.clone()).await {
            Err(DeliveryError::Tls(reason))
                if policy.session.tls == TlsPolicy::Opportunistic
                    && policy.session.auth.is_none() =>
            {
                tracing::info!(peer = %target.address, %reason, "TLS handshake failed; retrying in plaintext");
                let plain = SessionPolicy { tls: TlsPolicy::Disabled, auth: None };
                Self::open_with(target, bind, helo, t, policy, plain).await
            }
            other => other,
        }
    }

    async fn open_with(
        target: &Target,
        bind: Option<IpAddr>,
        helo: &str,
        t: &Timeouts,
        policy: &HopPolicy,
        session: SessionPolicy,
    ) -> Result<Connection, DeliveryError> {
        let address = target.address.as_str();
        let connect_err =
            |reason: String| DeliveryError::Connect { host: address.to_string(), reason };
        let stream = match tokio::time::timeout(t.connect, connect_from(address, bind)).await {
            Err(_) => return Err(connect_err("timed out".into())),
            Ok(Err(e)) => return Err(connect_err(e.to_string())),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let mut c = Connection {
            stream: Stream::Plain(stream),
            tls: policy.tls.clone(),
            name: target.name.clone(),
            client: Client::new(helo, session),
            buf: vec![0; 16 * 1024],
            timeouts: t.clone(),
            peer: address.to_string(),
            sent: 0,
        };
        match c.next_event().await? {
            ClientEvent::Ready(_) => {
                let label = if c.stream.is_tls() { "yes" } else { "no" };
                metrics::DELIVERY_TLS.with_label_values(&[label]).inc();
                Ok(c)
            }
            ClientEvent::Failed(f) | ClientEvent::Skipped(f) => Err(failure(f)),
            ClientEvent::Done(_) | ClientEvent::StartTls => {
                Err(DeliveryError::Protocol("transaction before greeting".into()))
            }
        }
    }

    /// The TLS handshake after the server's 220 to STARTTLS.
    async fn handshake(&mut self) -> Result<(), DeliveryError> {
        let tcp = self.stream.take_plain().ok_or_else(|| DeliveryError::Tls("no TCP".into()))?;
        let name = ServerName::try_from(self.name.clone())
            .map_err(|e| DeliveryError::Tls(format!("{}: {e}", self.name)))?;
        let connector = TlsConnector::from(self.tls.clone());
        match tokio::time::timeout(self.timeouts.command, connector.connect(name, tcp)).await {
            Err(_) => Err(DeliveryError::Timeout("TLS handshake")),
            Ok(Err(e)) => {
                metrics::DELIVERY_TLS.with_label_values(&["failed"]).inc();
                Err(DeliveryError::Tls(format!("handshake with {}: {e}", self.peer)))
            }
            Ok(Ok(tls)) => {
                self.stream = Stream::Tls(Box::new(tls));
                self.client.tls_established();
                Ok(())
            }
        }
    }

    /// Sends one message. `Ok` holds one reply per recipient; `Err` means the message could not
    /// go through this connection (every recipient shares the outcome). After `Err` other than
    /// [`DeliveryError::Unsendable`] the connection is unusable.
    pub async fn send(&mut self, msg: Outbound) -> Result<Vec<Reply>, DeliveryError> {
        self.client.start(msg);
        match self.next_event().await? {
            ClientEvent::Done(r) => {
                self.sent += 1;
                Ok(r.recipients)
            }
            ClientEvent::Skipped(ClientFailure::Unsendable(r)) => Err(DeliveryError::Unsendable(r)),
            ClientEvent::Skipped(f) | ClientEvent::Failed(f) => Err(failure(f)),
            ClientEvent::Ready(_) | ClientEvent::StartTls => {
                Err(DeliveryError::Protocol("unexpected greeting".into()))
            }
        }
    }

    /// What the server offered after the last EHLO.
    pub fn capabilities(&self) -> &crate::proto::smtp::client::Capabilities {
        self.client.capabilities()
    }

    pub fn is_usable(&self) -> bool {
        !self.client.is_closed()
    }

    /// Completes when the server closes the idle connection (or says anything unasked, which
    /// for SMTP means it is closing, e.g. `421 idle timeout`); the connection is then unusable.
    /// Cancel-safe: dropping the future before it completes loses nothing.
    pub async fn closed_while_idle(&mut self) {
        let mut byte = [0u8; 1];
        let _ = self.stream.read(&mut byte).await;
        self.client.handle_disconnect("closed by the server while idle");
    }

    /// QUIT politely; the reply is a courtesy and not waited for long.
    pub async fn quit(mut self) {
        if self.client.is_closed() {
            return;
        }
        self.client.quit();
        let _ = self.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.read(&mut self.buf)).await;
    }

    /// Runs the client until it reports an event.
    async fn next_event(&mut self) -> Result<ClientEvent, DeliveryError> {
        loop {
            self.flush().await?;
            match self.client.poll_event() {
                Some(ClientEvent::StartTls) => {
                    self.handshake().await?;
                    continue;
                }
                Some(ev) => return Ok(ev),
                None => {}
            }
            if !self.client.wants_input() {
                return Err(DeliveryError::Protocol("client stalled".into()));
            }
            let t = &self.timeouts;
            let (wait, what) = match self.client.phase() {
                Phase::Greeting => (t.command, "greeting"),
                Phase::DataInit => (t.command, "DATA reply"),
                Phase::DataTerm => (t.data_end, "end-of-data reply"),
                Phase::Command | Phase::Idle => (t.command, "command reply"),
            };
            match tokio::time::timeout(wait, self.stream.read(&mut self.buf)).await {
                Err(_) => return Err(DeliveryError::Timeout(what)),
                Ok(Ok(0)) => self.client.handle_disconnect("closed by peer"),
                Ok(Ok(n)) => {
                    let (client, buf) = (&mut self.client, &self.buf);
                    client.handle_input(&buf[..n]);
                }
                Ok(Err(e)) => self.client.handle_disconnect(&e.to_string()),
            }
        }
    }

    /// Writes everything the client queued, with vectored writes (no copy of the body).
    async fn flush(&mut self) -> Result<(), DeliveryError> {
        let mut out: Vec<Bytes> = Vec::new();
        while let Some(b) = self.client.poll_transmit() {
            out.push(b);
        }
        if out.is_empty() {
            return Ok(());
        }
        let wait = if self.client.phase() == Phase::DataTerm {
            self.timeouts.data_end
        } else {
            self.timeouts.command
        };
        match tokio::time::timeout(wait, write_all_bufs(&mut self.stream, out)).await {
            Err(_) => Err(DeliveryError::Timeout("write")),
            Ok(Err(e)) => Err(DeliveryError::ConnectionLost(e.to_string())),
            Ok(Ok(())) => Ok(()),
        }
    }
}

fn failure(f: ClientFailure) -> DeliveryError {
    match f {
        ClientFailure::Disconnected(reason) => DeliveryError::ConnectionLost(reason),
        ClientFailure::Refused(r) => DeliveryError::Reply(r),
        ClientFailure::Protocol(p) => DeliveryError::Protocol(p),
        ClientFailure::Unsendable(r) => DeliveryError::Unsendable(r),
        ClientFailure::Tls(m) => DeliveryError::Tls(m),
        ClientFailure::Auth(m) => DeliveryError::Auth(m),
    }
}
