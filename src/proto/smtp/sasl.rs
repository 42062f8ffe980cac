//! Server side of SMTP AUTH (RFC 4954) for PLAIN (RFC 4616) and LOGIN: decoding only; checking
//! the password is the driver's job.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::client::Credentials;

/// A mechanism exchange in progress: what the next client line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// AUTH PLAIN without an initial response: the token comes next.
    Plain,
    LoginUser,
    LoginPassword {
        user: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Send `334 <challenge>` and wait for the next line.
    Challenge(&'static str, Pending),
    Done(Credentials),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// 504 5.5.4
    UnknownMechanism,
    /// 501 5.5.2: not base64, or not the mechanism's shape.
    Malformed,
    /// 501 5.7.0: the client sent `*` (RFC 4954 4).
    Cancelled,
}

/// RFC 4954 4: "=" is an empty initial response.
fn decode(b64: &str) -> Result<Vec<u8>, SaslError> {
    let t = b64.trim();
    if t == "=" {
        return Ok(Vec::new());
    }
    B64.decode(t).map_err(|_| SaslError::Malformed)
}

fn text(b: Vec<u8>) -> Result<String, SaslError> {
    String::from_utf8(b).map_err(|_| SaslError::Malformed)
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`. An authzid other than the user is refused
/// (sluice does not let one user act as another).
fn plain(token: &str) -> Result<Credentials, SaslError> {
    let raw = decode(token)?;
    let mut parts = raw.split(|&b| b == 0);
    let (Some(authz), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let (user, pass) = (text(user.to_vec())?, text(pass.to_vec())?);
    if user.is_empty() || (!authz.is_empty() && authz != user.as_bytes()) {
        return Err(SaslError::Malformed);
    }
    Ok(Credentials { username: user, password: pass.into() })
}

const USERNAME: &str = "VXNlcm5hbWU6"; // "Username:"
const PASSWORD: &str = "UGFzc3dvcmQ6"; // "Password:"

/// `AUTH <mechanism> [initial-response]`.
pub fn start(mechanism: &str, initial: Option<&str>) -> Result<Progress, SaslError> {
    match (mechanism.to_ascii_uppercase().as_str(), initial) {
        ("PLAIN", Some(tok)) => plain(tok).map(Progress::Done),
        ("PLAIN", None) => Ok(Progress::Challenge("", Pending::Plain)),
        ("LOGIN", Some(user)) => {
            let user = text(decode(user)?)?;
            Ok(Progress::Challenge(PASSWORD, Pending::LoginPassword { user }))
        }
        ("LOGIN", None) => Ok(Progress::Challenge(USERNAME, Pending::LoginUser)),
        _ => Err(SaslError::UnknownMechanism),
    }
}

/// The client's answer to a challenge.
pub fn step(pending: Pending, line: &str) -> Result<Progress, SaslError> {
    if line.trim() == "*" {
        return Err(SaslError::Cancelled);
    }
    match pending {
        Pending::Plain => plain(line).map(Progress::Done),
        Pending::LoginUser => {
            let user = text(decode(line)?)?;
            Ok(Progress::Challenge(PASSWORD, Pending::LoginPassword { user }))
        }
        Pending::LoginPassword { user } => {
            let password = text(decode(line)?)?;
            Ok(Progress::Done(Credentials { username: user, password: password.into() }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(u: &str, p: &str) -> Progress {
        Progress::Done(Credentials { username: u.into(), password: p.into() })
    }

    #[test]
    fn rfc4616_plain() {
        // "\0app\0s3cret" and "app\0app\0s3cret"
        assert_eq!(start("plain", Some("AGFwcABzM2NyZXQ=")), Ok(creds("app", "s3cret")));
        assert_eq!(start("PLAIN", Some("YXBwAGFwcABzM2NyZXQ=")), Ok(creds("app", "s3cret")));
        // authzid "root" for user "app": refused.
        assert_eq!(start("PLAIN", Some("cm9vdABhcHAAczNjcmV0")), Err(SaslError::Malformed));
        assert_eq!(start("PLAIN", Some("not base64!")), Err(SaslError::Malformed));
        assert_eq!(start("PLAIN", Some("=")), Err(SaslError::Malformed), "empty is not 3 fields");
        assert_eq!(start("PLAIN", None), Ok(Progress::Challenge("", Pending::Plain)));
        assert_eq!(step(Pending::Plain, "AGFwcABzM2NyZXQ="), Ok(creds("app", "s3cret")));
        assert_eq!(step(Pending::Plain, "*"), Err(SaslError::Cancelled));
    }

    #[test]
    fn login_steps() {
        let Ok(Progress::Challenge(c, p)) = start("LOGIN", None) else { panic!() };
        assert_eq!(c, USERNAME);
        let Ok(Progress::Challenge(c, p)) = step(p, "YXBw") else { panic!() };
        assert_eq!(c, PASSWORD);
        assert_eq!(step(p, "czNjcmV0"), Ok(creds("app", "s3cret")));
        let Ok(Progress::Challenge(_, p)) = start("LOGIN", Some("YXBw")) else { panic!() };
        assert_eq!(p, Pending::LoginPassword { user: "app".into() });
        assert_eq!(start("CRAM-MD5", None), Err(SaslError::UnknownMechanism));
    }
}
