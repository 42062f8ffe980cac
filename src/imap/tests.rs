//! The IMAP connection driver over an in-memory pipe, on tokio's paused clock: the 30-minute
//! IDLE limit passes in no time.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

struct Driven {
    lines: BufReader<tokio::io::ReadHalf<DuplexStream>>,
    tx: tokio::io::WriteHalf<DuplexStream>,
    _dir: tempfile::TempDir,
}

impl Driven {
    /// alice@example.com (password "pw") logged in, INBOX selected.
    async fn logged_in() -> Driven {
        let dir = tempfile::tempdir().unwrap();
        let mut users = crate::auth::users::UsersFileEditor::open(&dir.path().join("users.toml"))
            .expect("users file");
        users.add("alice@example.com", "pw", Vec::new(), None).unwrap();
        users.save().unwrap();
        let config = "[auth]\nplaintext_on_loopback = true\n[local]\ndomains = [\"example.com\"]\n\
            [[listener]]\nmode = \"imap\"\naddress = \"127.0.0.1:0\"\n";
        let mut cfg = crate::config::Config::parse(config, "test.toml").unwrap();
        cfg.data_dir = dir.path().to_path_buf();
        let ctx = crate::server::test_mailbox_listener(&cfg).await;
        let ip = "127.0.0.1".parse().unwrap();
        let (client, server) = tokio::io::duplex(1 << 16);
        let served = Arc::clone(&ctx);
        tokio::spawn(
            async move { super::run(server, ip, &served, CancellationToken::new()).await },
        );
        let (rx, tx) = tokio::io::split(client);
        let mut d = Driven { lines: BufReader::new(rx), tx, _dir: dir };
        assert!(d.line().await.starts_with("* OK"));
        assert!(d.command("a LOGIN alice@example.com pw", "a ").await.starts_with("a OK"));
        assert!(d.command("b SELECT INBOX", "b ").await.starts_with("b OK"));
        // The login and the Maildir were made on real time; the clock stops only now.
        tokio::time::pause();
        d
    }

    /// The next line ("" once the server closed the connection).
    async fn line(&mut self) -> String {
        let mut line = String::new();
        self.lines.read_line(&mut line).await.unwrap();
        line.trim_end().to_string()
    }

    /// Sends `text` and returns the first line that starts with `until`.
    async fn command(&mut self, text: &str, until: &str) -> String {
        self.tx.write_all(format!("{text}\r\n").as_bytes()).await.unwrap();
        loop {
            let line = self.line().await;
            if line.is_empty() || line.starts_with(until) {
                return line;
            }
        }
    }

    /// Waits (an hour at most) for the server to end the IDLE; the line and when it came.
    async fn idle_ends(&mut self) -> (String, Duration) {
        let started = Instant::now();
        let line = tokio::time::timeout(Duration::from_secs(3600), self.line())
            .await
            .unwrap_or_else(|_| panic!("still idling after an hour"));
        (line, started.elapsed())
    }
}

/// RFC 2177: a client that does not re-issue IDLE is logged out at the 30-minute
/// autologout, although the server looked at the mailbox every 30 s meanwhile.
#[tokio::test]
async fn idle_is_logged_out_after_thirty_minutes_unless_re_issued() {
    let mut d = Driven::logged_in().await;
    assert_eq!(d.command("c IDLE", "+").await, "+ idling");
    // Re-issued after 20 minutes, the session lives on.
    tokio::time::sleep(Duration::from_secs(20 * 60)).await;
    assert_eq!(d.command("DONE", "c ").await, "c OK IDLE terminated");
    assert_eq!(d.command("d IDLE", "+").await, "+ idling");
    let (line, after) = d.idle_ends().await;
    assert!(line.starts_with("* BYE"), "{line}");
    let limit = Duration::from_secs(30 * 60);
    assert!(after >= limit && after < limit + Duration::from_secs(31), "{after:?}");
    assert_eq!(d.line().await, "", "closed after the BYE");
}
