//! What every listener shares: for now, serving HTTP with timeouts and connection caps
//! ([`http`]). The SMTP, IMAP and POP3 accept loops have their own limits (`smtp::listener`,
//! `mailbox_listener`).

pub mod http;
