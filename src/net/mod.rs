//! What every listener shares: the one accept loop ([`accept`]) with the PROXY protocol
//! ([`proxy`]), and serving HTTP with timeouts and connection caps ([`http`]). Each listener
//! kind keeps its own admission (SMTP's and the mailbox listeners' `ConnectionLimits`,
//! HTTP's slots) and session code; TLS handshakes have deadlines in `smtp::conn::accept_tls`
//! (SMTP, IMAP, POP3) and [`http`].

pub mod accept;
pub mod http;
pub mod proxy;
