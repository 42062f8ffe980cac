//! Shared by the mailbox and IMAP tests: sluice with local mailboxes and POP3/IMAP
//! listeners, and a private Dovecot on loopback as the reference server.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

pub struct Setup {
    pub s: Sluice,
    pub _dir: tempfile::TempDir,
    pub pop3: std::net::SocketAddr,
    pub imap: std::net::SocketAddr,
}

/// sluice with mailboxes for example.com (users alice and bob, password "pw"; an alias
/// `team@` to both; postmaster to alice), a POP3 listener with STLS, plaintext logins allowed
/// on loopback, and `extra` appended.
pub fn start(extra: &str) -> Setup {
    start_with_users(extra, &[])
}

/// [`start`] with more users (password "pw") in the users file.
pub fn start_with_users(extra: &str, more: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    self_signed(&tls_dir, "mail.sluice.test");
    let users = dir.path().join("users.toml");
    for name in ["alice@example.com", "bob@example.com"].iter().chain(more) {
        add_user(&users, name, "pw", &[]);
    }
    let cfg = format!(
        "[tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\n\
         [auth]\nusers_file = \"{1}\"\nplaintext_on_loopback = true\nfailure_delay = \"10ms\"\n\
         [local]\ndomains = [\"example.com\"]\npostmaster = \"alice@example.com\"\n\
         aliases = {{ \"team@example.com\" = [\"alice@example.com\", \"bob@example.com\"] }}\n{extra}\n\
         [queue]\nretry = [\"300ms\"]\n\
         [[listener]]\nmode = \"pop3\"\naddress = \"127.0.0.1:0\"\n\
         [[listener]]\nmode = \"imap\"\naddress = \"127.0.0.1:0\"\n",
        tls_dir.display(),
        users.display()
    );
    let s = Sluice::start(&cfg);
    let pop3 = s.listener("pop3");
    let imap = s.listener("imap");
    Setup { s, _dir: dir, pop3, imap }
}

impl Setup {
    /// The listeners' self-signed certificate.
    pub fn cert(&self) -> PathBuf {
        self._dir.path().join("tls/cert.pem")
    }

    pub fn maildir(&self, user: &str) -> PathBuf {
        self.s.data_dir.join("mailboxes/example.com").join(user).join("Maildir")
    }

    /// The messages in a user's Maildir (new and cur), as text.
    pub fn mailbox(&self, user: &str) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(d) = std::fs::read_dir(self.maildir(user).join(sub)) {
                for e in d {
                    out.push(
                        String::from_utf8_lossy(&std::fs::read(e.unwrap().path()).unwrap())
                            .into_owned(),
                    );
                }
            }
        }
        out
    }

    /// Sends `message` (header and body, CRLF lines) from `from` to `rcpt` over SMTP.
    pub fn send_raw(&self, rcpt: &str, from: &str, message: &str) {
        let mut c = Client::ehlo(self.s.smtp);
        assert_eq!(code(&c.cmd(&format!("MAIL FROM:<{from}>"))), 250);
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert_eq!(code(&r), 250, "{r}");
        assert_eq!(code(&c.cmd("DATA")), 354);
        let r = c.cmd(&format!("{message}."));
        assert_eq!(code(&r), 250, "{r}");
    }

    pub fn send(&self, rcpt: &str, message_id: &str, body: &str) {
        let mut c = Client::ehlo(self.s.smtp);
        assert_eq!(code(&c.cmd("MAIL FROM:<sender@example.org>")), 250);
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert_eq!(code(&r), 250, "{r}");
        assert_eq!(code(&c.cmd("DATA")), 354);
        let r =
            c.cmd(&format!("Message-ID: <{message_id}>\r\nSubject: {message_id}\r\n\r\n{body}."));
        assert_eq!(code(&r), 250, "{r}");
    }
}

/// A private Dovecot (Debian's dovecot-pop3d/-imapd) serving `maildir` over POP3 or IMAP
/// (`protocol`) on loopback, as uid 65534; UIDL is the Maildir file name
/// (`pop3_uidl_format = %f`), as sluice's.
pub struct Dovecot {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Dovecot {
    pub fn start(maildir: &std::path::Path, protocol: &str) -> Dovecot {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.path();
        let conf = format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n\
             protocols = {protocol}\nlisten = 127.0.0.1\nssl = no\ndisable_plaintext_auth = no\n\
             auth_mechanisms = plain\ndefault_login_user = dovenull\ndefault_internal_user = dovecot\n\
             passdb {{\n driver = static\n args = password=pw\n}}\n\
             userdb {{\n driver = static\n args = uid=65534 gid=65534 home={d}/home mail=maildir:{m}\n}}\n\
             first_valid_uid = 100\npop3_uidl_format = %f\n\
             service {protocol}-login {{\n inet_listener {protocol} {{\n address = 127.0.0.1\n port = {port}\n }}\n\
             inet_listener {protocol}s {{\n port = 0\n }}\n chroot =\n}}\n\
             service anvil {{\n chroot =\n}}\n",
            d = d.display(),
            m = maildir.display(),
        );
        std::fs::write(d.join("dovecot.conf"), conf).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let child =
            Command::new("dovecot").args(["-F", "-c"]).arg(d.join("dovecot.conf")).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "dovecot did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Dovecot { child, port, _dir: dir }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM: the master stops its children too.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

pub fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    let ok = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// A raw IMAP connection past the greeting: the reading half and the writing half.
pub fn imap_connect(
    addr: std::net::SocketAddr,
) -> (std::io::BufReader<std::net::TcpStream>, std::net::TcpStream) {
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    imap_until(&mut r, "* OK");
    (r, s)
}

/// Raw IMAP lines: returns everything up to and including the line starting with `until`.
pub fn imap_until(r: &mut impl std::io::BufRead, until: &str) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "closed; got {all}");
        all.push_str(&line);
        if line.starts_with(until) {
            return all;
        }
    }
}
