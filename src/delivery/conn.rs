//! One outbound SMTP connection driving the sans-IO client: connect and greet once, then send
//! any number of messages, then QUIT. Each wait has its RFC 5321 4.5.3.2 timeout.

use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::DeliveryError;
use crate::proto::smtp::Reply;
use crate::proto::smtp::client::{Client, ClientEvent, ClientFailure, Outbound, Phase};

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
    pub data_end: Duration,
}

pub struct Connection {
    stream: TcpStream,
    client: Client,
    buf: Vec<u8>,
    timeouts: Timeouts,
    /// The address connected to, for logs and bounces.
    pub peer: String,
    /// Messages sent over this connection.
    pub sent: usize,
}

impl Connection {
    /// Connects to `address` (`host:port`) and waits until the server is ready (greeting, EHLO).
    pub async fn open(
        address: &str,
        helo: &str,
        t: &Timeouts,
    ) -> Result<Connection, DeliveryError> {
        let connect_err =
            |reason: String| DeliveryError::Connect { host: address.to_string(), reason };
        let stream = match tokio::time::timeout(t.connect, TcpStream::connect(address)).await {
            Err(_) => return Err(connect_err("timed out".into())),
            Ok(Err(e)) => return Err(connect_err(e.to_string())),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let mut c = Connection {
            stream,
            client: Client::new(helo),
            buf: vec![0; 16 * 1024],
            timeouts: t.clone(),
            peer: address.to_string(),
            sent: 0,
        };
        match c.next_event().await? {
            ClientEvent::Ready(_) => Ok(c),
            ClientEvent::Failed(f) | ClientEvent::Skipped(f) => Err(failure(f)),
            ClientEvent::Done(_) => {
                Err(DeliveryError::Protocol("transaction before greeting".into()))
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
            ClientEvent::Ready(_) => Err(DeliveryError::Protocol("unexpected greeting".into())),
        }
    }

    pub fn is_usable(&self) -> bool {
        !self.client.is_closed()
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
            if let Some(ev) = self.client.poll_event() {
                return Ok(ev);
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
        match tokio::time::timeout(wait, write_all(&mut self.stream, out)).await {
            Err(_) => Err(DeliveryError::Timeout("write")),
            Ok(Err(e)) => Err(DeliveryError::ConnectionLost(e.to_string())),
            Ok(Ok(())) => Ok(()),
        }
    }
}

fn failure(f: ClientFailure) -> DeliveryError {
    match f {
        ClientFailure::Refused(r) if r.code == 421 && r.text.starts_with("connection lost") => {
            DeliveryError::ConnectionLost(r.text.to_string())
        }
        ClientFailure::Refused(r) => DeliveryError::Reply(r),
        ClientFailure::Protocol(p) => DeliveryError::Protocol(p),
        ClientFailure::Unsendable(r) => DeliveryError::Unsendable(r),
    }
}

async fn write_all(stream: &mut TcpStream, mut bufs: Vec<Bytes>) -> std::io::Result<()> {
    let mut first = 0;
    while first < bufs.len() {
        let slices: Vec<std::io::IoSlice<'_>> =
            bufs[first..].iter().take(64).map(|b| std::io::IoSlice::new(b)).collect();
        let mut n = stream.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && first < bufs.len() {
            let len = bufs[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                bufs[first].advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}
