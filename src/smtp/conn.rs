//! One SMTP connection: read -> session -> write, with RFC 5321 4.5.3.2 timeouts, graceful
//! shutdown and the hand-off to the spool. No protocol logic lives here.

use crate::delivery_log::Event as LogEvent;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{Charge, ListenerContext};
use crate::metrics;
use crate::proto::smtp::message;
use crate::proto::smtp::session::{Event, Session, Step, StoreError, Transaction, Waiting};
use crate::spool::{self, Envelope, NewMessage, Recipient, SpoolError};

/// Decrements the active-connection gauge however the connection ends.
struct ActiveGuard(String);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        metrics::SMTP_CONNECTIONS_ACTIVE.with_label_values(&[&self.0]).dec();
    }
}

pub async fn run(
    mut stream: TcpStream,
    ip: IpAddr,
    ctx: Arc<ListenerContext>,
    shutdown: CancellationToken,
) {
    metrics::SMTP_CONNECTIONS_ACTIVE.with_label_values(&[&ctx.name]).inc();
    let _active = ActiveGuard(ctx.name.clone());
    let _ = stream.set_nodelay(true);
    let mut session = Session::new(ctx.session.clone(), ip);
    let mut charge = Charge::new(ctx.budget.clone());
    loop {
        let step = session.advance();
        charge.set(session.held_bytes());
        record_events(&mut session, &ctx.name);
        match step {
            Step::NeedInput => {
                if flush(&mut stream, &mut session, &ctx).await.is_err() {
                    return;
                }
                let timeout = match session.waiting_for() {
                    Waiting::Command => ctx.command_timeout,
                    Waiting::Data => ctx.data_timeout,
                };
                let input = session.input();
                if input.capacity() - input.len() < 2048 {
                    input.reserve(8192);
                }
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => session.handle_shutdown(),
                    read = tokio::time::timeout(timeout, stream.read_buf(session.input())) => match read {
                        Err(_) => session.handle_timeout(),
                        Ok(Ok(0)) | Ok(Err(_)) => return, // the client went away
                        Ok(Ok(_)) => {
                            if charge.set(session.held_bytes())
                                && session.reading_body()
                                && session.handle_over_budget()
                            {
                                metrics::MEMORY_BUDGET_EXCEEDED.inc();
                            }
                        }
                    },
                }
            }
            Step::Store(tx) => {
                let size = tx.body.len();
                let (id, result) = store(&ctx, *tx).await;
                let id = id.to_string();
                session
                    .handle_stored(result.as_ref().map(|_| id.as_str()).map_err(store_error), size);
                match result {
                    Ok(()) => ctx.stored.notify_one(),
                    Err(e) => {
                        tracing::warn!(%ip, error = %e, "message refused: spool did not store it")
                    }
                }
            }
            Step::Close => {
                let _ = flush(&mut stream, &mut session, &ctx).await;
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

async fn flush(
    stream: &mut TcpStream,
    session: &mut Session,
    ctx: &ListenerContext,
) -> std::io::Result<()> {
    let out = session.output();
    if out.is_empty() {
        return Ok(());
    }
    let res = tokio::time::timeout(ctx.command_timeout, stream.write_all(out)).await;
    out.clear();
    match res {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

fn record_events(session: &mut Session, listener: &str) {
    for ev in session.drain_events() {
        match ev {
            Event::Accepted { bytes } => {
                metrics::MESSAGES_RECEIVED.with_label_values(&[listener]).inc();
                metrics::BYTES_RECEIVED.inc_by(bytes as u64);
            }
            Event::Rejected(why) => {
                metrics::MESSAGES_REJECTED.with_label_values(&[why.label()]).inc()
            }
        }
    }
}

fn store_error(e: &SpoolError) -> StoreError {
    match e {
        SpoolError::NoSpace => StoreError::NoSpace,
        SpoolError::Closed => StoreError::ShuttingDown,
        SpoolError::Io(_) | SpoolError::Corrupt(_) | SpoolError::NotFound => StoreError::Failed,
    }
}

/// Builds the envelope and trace header, and waits until the spool has made them durable.
async fn store(ctx: &ListenerContext, tx: Transaction) -> (spool::QueueId, Result<(), SpoolError>) {
    let id = ctx.spool.next_id();
    let now = spool::unix_millis();
    let trace = tx.trace_header(&ctx.session.hostname, &id.to_string(), now / 1000);
    let envelope = Envelope {
        id,
        received_at: now,
        sender: tx.mail.from.map(|m| m.into_string()).unwrap_or_default(),
        recipients: tx
            .rcpts
            .into_iter()
            .map(|r| Recipient::queued(r.to.into_string(), r.orcpt, r.notify))
            .collect(),
        message_id: message::message_id(&tx.body),
        size: (trace.len() + tx.body.len()) as u64,
        helo: tx.helo,
        client_ip: tx.client_ip,
        body_type: tx.mail.body,
        smtputf8: tx.mail.smtputf8,
        ret: tx.mail.ret,
        envid: tx.mail.envid,
    };
    let event = ctx.log.enabled().then(|| {
        let mut e = LogEvent::new("reception", id);
        e.sender = Some(envelope.sender.clone());
        e.recipients = envelope.recipients.iter().map(|r| r.address.clone()).collect();
        e.remote = Some(envelope.client_ip.to_string());
        e.size = Some(envelope.size);
        e
    });
    let msg = NewMessage { envelope, trace: Bytes::from(trace), body: tx.body };
    let result = ctx.spool.store(msg).await;
    if let (Ok(()), Some(e)) = (&result, event) {
        ctx.log.log(e);
    }
    (id, result)
}
