//! The IMAP connection driver over an in-memory pipe, on tokio's paused clock: the login
//! deadline and the 30-minute IDLE limit pass in no time.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::mailbox_listener::testing::Piped;

async fn connected() -> Piped {
    Piped::start("imap", |io, ip, ctx| async move {
        super::run(io, ip, &ctx, CancellationToken::new()).await
    })
    .await
}

/// alice@example.com logged in, INBOX selected, and the clock paused (the login and the
/// Maildir were made on real time).
async fn logged_in() -> Piped {
    let mut p = connected().await;
    assert!(p.command("a LOGIN alice@example.com pw", "a ").await.starts_with("a OK"));
    assert!(p.command("b SELECT INBOX", "b ").await.starts_with("b OK"));
    tokio::time::pause();
    p
}

/// Waits (an hour at most) for the server's next line; the line and when it came.
async fn next_line(p: &mut Piped) -> (String, Duration) {
    let started = Instant::now();
    let line = tokio::time::timeout(Duration::from_secs(3600), p.line())
        .await
        .unwrap_or_else(|_| panic!("nothing from the server for an hour"));
    (line, started.elapsed())
}

/// RFC 2177: a client that does not re-issue IDLE is logged out at the 30-minute
/// autologout, although the server looked at the mailbox every 30 s meanwhile.
#[tokio::test]
async fn idle_is_logged_out_after_thirty_minutes_unless_re_issued() {
    let mut d = logged_in().await;
    assert_eq!(d.command("c IDLE", "+").await, "+ idling");
    // Re-issued after 20 minutes, the session lives on.
    tokio::time::sleep(Duration::from_secs(20 * 60)).await;
    assert_eq!(d.command("DONE", "c ").await, "c OK IDLE terminated");
    assert_eq!(d.command("d IDLE", "+").await, "+ idling");
    let (line, after) = next_line(&mut d).await;
    assert!(line.starts_with("* BYE"), "{line}");
    let limit = Duration::from_secs(30 * 60);
    assert!(after >= limit && after < limit + Duration::from_secs(31), "{after:?}");
    assert_eq!(d.line().await, "", "closed after the BYE");
}

/// A client that never logs in is cut at the login deadline, though it sends a command every
/// 50 s (each well within the per-command timeout).
#[tokio::test]
async fn a_client_that_never_logs_in_is_cut_at_the_deadline() {
    let mut p = connected().await;
    tokio::time::pause();
    let started = Instant::now();
    // Commands at 0, 50, 100 and 150 s; the 60 s per-command timer alone would allow the
    // client until 210 s.
    for i in 0..4 {
        assert!(p.command("n NOOP", "n ").await.starts_with("n OK"));
        if i < 3 {
            tokio::time::sleep(Duration::from_secs(50)).await;
        }
    }
    let (line, _) = next_line(&mut p).await;
    assert!(line.starts_with("* BYE"), "{line}");
    let after = started.elapsed();
    assert!(after >= Duration::from_secs(180) && after < Duration::from_secs(181), "{after:?}");
    assert_eq!(p.line().await, "", "closed");
}
