//! One delivery over one connection: connect, run the sans-IO client, return one outcome per
//! recipient. Each wait has its RFC 5321 4.5.3.2 timeout.

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

/// Sends `msg` to the SMTP server at `address` (`host:port`). `Ok` holds one reply per
/// recipient; `Err` is a failure of the whole session (every recipient shares it).
pub async fn deliver(
    address: &str,
    helo: &str,
    msg: Outbound,
    t: &Timeouts,
) -> Result<Vec<Reply>, DeliveryError> {
    let connect_err = |reason: String| DeliveryError::Connect { host: address.to_string(), reason };
    let mut stream = match tokio::time::timeout(t.connect, TcpStream::connect(address)).await {
        Err(_) => return Err(connect_err("timed out".into())),
        Ok(Err(e)) => return Err(connect_err(e.to_string())),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let mut client = Client::new(helo);
    let mut msg = Some(msg);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Transmit everything queued, as one vectored write where possible.
        let mut out: Vec<Bytes> = Vec::new();
        while let Some(b) = client.poll_transmit() {
            out.push(b);
        }
        if !out.is_empty() {
            let wait = if client.phase() == Phase::DataTerm { t.data_end } else { t.command };
            match tokio::time::timeout(wait, write_all(&mut stream, out)).await {
                Err(_) => return Err(DeliveryError::Timeout("write")),
                Ok(Err(e)) => return Err(DeliveryError::ConnectionLost(e.to_string())),
                Ok(Ok(())) => {}
            }
        }
        if let Some(ev) = client.poll_event() {
            match ev {
                ClientEvent::Ready(_) => {
                    if let Some(m) = msg.take() {
                        client.start(m);
                    }
                    continue;
                }
                ClientEvent::Done(result) => {
                    client.quit();
                    while let Some(b) = client.poll_transmit() {
                        let _ = stream.write_all(&b).await;
                    }
                    // QUIT's reply is a courtesy; do not wait long for it.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
                    return Ok(result.recipients);
                }
                ClientEvent::Skipped(ClientFailure::Unsendable(r)) => {
                    client.quit();
                    while let Some(b) = client.poll_transmit() {
                        let _ = stream.write_all(&b).await;
                    }
                    return Err(DeliveryError::Unsendable(r));
                }
                ClientEvent::Skipped(f) | ClientEvent::Failed(f) => return Err(failure(f)),
            }
        }
        if !client.wants_input() {
            return Err(DeliveryError::Protocol("client stalled".into()));
        }
        let (wait, what) = match client.phase() {
            Phase::Greeting => (t.command, "greeting"),
            Phase::DataInit => (t.command, "DATA reply"),
            Phase::DataTerm => (t.data_end, "end-of-data reply"),
            Phase::Command | Phase::Idle => (t.command, "command reply"),
        };
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Err(_) => return Err(DeliveryError::Timeout(what)),
            Ok(Ok(0)) => client.handle_disconnect("closed by peer"),
            Ok(Ok(n)) => client.handle_input(&buf[..n]),
            Ok(Err(e)) => client.handle_disconnect(&e.to_string()),
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

/// Writes all buffers with vectored writes (headers and body slices, no copy into one buffer).
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
