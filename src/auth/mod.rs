//! Authentication of SMTP clients: the users file with argon2id password hashes, and the
//! lockout that slows and then stops password guessing.

pub mod lockout;
pub mod users;
