//! The IMAP session's state and the small helpers every command module shares. The
//! commands live in `session.rs` (dispatch, login, SELECT, STORE, EXPUNGE), `mailboxes.rs`,
//! `fetch.rs` and `search.rs`; they all build on this module, and it on none of them, so the
//! modules import in one direction.

use std::num::NonZeroU32;

use imap_codec::imap_types::core::{Atom, Tag};
use imap_codec::imap_types::fetch::MessageDataItemName;
use imap_codec::imap_types::flag::{Flag, FlagFetch};
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

use crate::local::Maildir;
use crate::local::keywords::Keywords;
use crate::local::mailstore::{Snapshot, flag};
use crate::proto::smtp::client::Credentials;

#[derive(Debug, Clone)]
pub struct ImapConfig {
    pub hostname: String,
    /// STARTTLS is offered (a certificate is set, the session is not TLS yet).
    pub starttls: bool,
    /// LOGIN and AUTHENTICATE without TLS (`[auth] plaintext_on_loopback`, loopback listener).
    pub plaintext_ok: bool,
    /// Folders a user may have (`[local] max_folders`).
    pub max_folders: usize,
}

/// What the driver must do after a command.
#[derive(Debug)]
pub enum Next {
    Continue,
    /// Check the password; answer with [`Session::login_result`].
    Login {
        tag: Tag<'static>,
        creds: Credentials,
    },
    /// AUTHENTICATE without an initial response: send `+ `, read one line of base64 and give
    /// it to [`Session::authenticate_data`].
    AuthenticateData {
        tag: Tag<'static>,
    },
    /// Send the output, then start TLS, then [`Session::tls_established`].
    StartTls,
    /// IDLE (RFC 2177): send `+ idling`, report changes with [`Session::refresh`] until the
    /// client's DONE, then [`Session::idle_done`].
    Idle {
        tag: Tag<'static>,
    },
    /// Send the output, then call [`Session::fetch_more`] (on the blocking pool) until
    /// [`Session::has_more`] is false: a large FETCH is answered in parts.
    More,
    /// Send the output and close.
    Close,
}

/// The selected mailbox as the client knows it: sequence numbers are positions here.
pub(super) struct View {
    pub(super) folder: Maildir,
    pub(super) read_only: bool,
    /// Shared with other sessions until this one changes it (copy on write).
    pub(super) snapshot: std::sync::Arc<Snapshot>,
    /// The folder's keywords as this session last told the client (FLAGS).
    pub(super) keywords: Keywords,
    /// The UIDs this session reports as \Recent: those it claimed (read-write), or those no
    /// session had claimed when it looked (read-only, which claims nothing).
    pub(super) recent: Vec<std::ops::Range<u32>>,
}

impl View {
    pub(super) fn is_recent(&self, uid: u32) -> bool {
        self.recent.iter().any(|r| r.contains(&uid))
    }

    /// How many messages of the view are \Recent to this session.
    pub(super) fn recent_count(&self) -> u32 {
        self.snapshot.messages.iter().filter(|m| self.is_recent(m.uid)).count() as u32
    }

    /// Claims \Recent for messages no session was told of yet (read-write views only), once
    /// the view holds messages past what it claimed before.
    pub(super) fn claim_recent(&mut self) {
        let claimed_to = self.recent.last().map_or(0, |r| r.end);
        if self.read_only || self.snapshot.messages.last().is_none_or(|m| m.uid < claimed_to) {
            return;
        }
        if let Ok(Some(r)) = self.folder.claim_recent() {
            self.recent.push(r);
        }
    }
}

pub(super) enum State {
    NotAuthenticated,
    Authenticated,
    Selected(View),
    Logout,
}

pub struct Session {
    pub(super) cfg: ImapConfig,
    pub(super) tls: bool,
    pub(super) state: State,
    /// The user's Maildir (INBOX; folders are Maildir++ directories inside it).
    pub(super) maildir: Option<Maildir>,
    pub(super) out: Vec<u8>,
    /// A FETCH answered in parts.
    pub(super) pending: Option<PendingFetch>,
    /// The user's quota for APPEND, in octets (0: none).
    pub(super) quota: u64,
    /// Set when a command added or removed messages (the driver then refreshes the quota
    /// count and wakes IDLE sessions).
    pub(super) size_changed: bool,
}

pub(super) fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).expect("at least 1")
}

/// Whether `n` is in the set, with `*` meaning `largest` (never iterates a range: `1:*` over
/// 4 billion UIDs costs the same as `1:2`).
pub fn contains(set: &SequenceSet, n: u32, largest: u32) -> bool {
    let value = |s: &SeqOrUid| match s {
        SeqOrUid::Value(v) => v.get(),
        SeqOrUid::Asterisk => largest,
    };
    set.0.as_ref().iter().any(|seq| match seq {
        Sequence::Single(s) => value(s) == n,
        Sequence::Range(a, b) => {
            let (lo, hi) = (value(a).min(value(b)), value(a).max(value(b)));
            (lo..=hi).contains(&n)
        }
    })
}

/// The system flags of `bits`, then the keywords of `kw` by their names in `keywords`.
pub(super) fn flag_list(bits: u8, kw: u32, keywords: &Keywords) -> Vec<Flag<'static>> {
    let mut v = flags_of(bits);
    v.extend(
        keywords.names(kw).filter_map(|n| Atom::try_from(n.to_string()).ok().map(Flag::keyword)),
    );
    v
}

/// The keyword names among `flags` (`$Junk`; system flags and `\Extension`s left out).
pub(super) fn keyword_names(flags: &[Flag<'_>]) -> Vec<String> {
    flags
        .iter()
        .filter_map(|f| match f {
            Flag::Keyword(k) => Some(k.as_ref().to_string()),
            _ => None,
        })
        .collect()
}

pub(super) fn flags_of(bits: u8) -> Vec<Flag<'static>> {
    let mut v = Vec::new();
    for (bit, f) in [
        (flag::SEEN, Flag::Seen),
        (flag::ANSWERED, Flag::Answered),
        (flag::FLAGGED, Flag::Flagged),
        (flag::DELETED, Flag::Deleted),
        (flag::DRAFT, Flag::Draft),
    ] {
        if bits & bit != 0 {
            v.push(f);
        }
    }
    v
}

pub(super) fn bits_of(flags: &[Flag<'_>]) -> u8 {
    flags.iter().fold(0, |acc, f| {
        acc | match f {
            Flag::Seen => flag::SEEN,
            Flag::Answered => flag::ANSWERED,
            Flag::Flagged => flag::FLAGGED,
            Flag::Deleted => flag::DELETED,
            Flag::Draft => flag::DRAFT,
            // Keywords: see keyword_names.
            _ => 0,
        }
    })
}

/// A FETCH being answered in parts.
pub struct PendingFetch {
    pub(super) tag: Tag<'static>,
    /// Indexes into the view still to answer.
    pub(super) todo: std::collections::VecDeque<usize>,
    pub(super) names: Vec<MessageDataItemName<'static>>,
}

pub(super) fn fetch_flags(
    bits: u8,
    kw: u32,
    keywords: &Keywords,
    recent: bool,
) -> Vec<FlagFetch<'static>> {
    let mut v: Vec<FlagFetch<'static>> =
        flag_list(bits, kw, keywords).into_iter().map(FlagFetch::Flag).collect();
    if recent {
        v.push(FlagFetch::Recent);
    }
    v
}

/// The latest internal date IMAP can write (`date-year = 4DIGIT`): 9999-12-31 23:59:59 UTC.
pub(super) const LAST_DATE: i64 = 253_402_300_799;

/// An internal date (seconds) for FETCH, clamped to what IMAP can write: a stored date is never
/// trusted to be representable (a Maildir written by another program, a date from APPEND).
pub(super) fn internal_date(secs: i64) -> imap_codec::imap_types::datetime::DateTime {
    use imap_codec::imap_types::datetime::DateTime;
    let utc = chrono::FixedOffset::east_opt(0).expect("zero offset");
    let at = |s: i64| {
        let t = chrono::DateTime::from_timestamp(s, 0).unwrap_or_default().with_timezone(&utc);
        DateTime::try_from(t).ok()
    };
    at(secs.clamp(0, LAST_DATE)).or_else(|| at(0)).expect("the epoch is a valid IMAP date")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str) -> SequenceSet {
        SequenceSet::try_from(text).unwrap()
    }

    #[test]
    fn internal_dates_past_year_9999_or_before_1970_are_clamped_not_a_panic() {
        for secs in [i64::MIN, -1, 0, LAST_DATE, LAST_DATE + 1, 253_402_343_999, i64::MAX] {
            let d = internal_date(secs);
            let t = d.as_ref().timestamp();
            assert!((0..=LAST_DATE).contains(&t), "{secs} gave {t}");
        }
    }

    #[test]
    fn sequence_sets_are_checked_without_walking_ranges() {
        let s = set("2,4:6,9:*");
        let hits: Vec<u32> = (1..=12).filter(|&n| contains(&s, n, 10)).collect();
        assert_eq!(hits, [2, 4, 5, 6, 9, 10]);
        // Reversed ranges count (RFC 3501 9: "4:2" is "2:4"), and 1:4294967295 is one test.
        assert!(contains(&set("6:4"), 5, 10));
        assert!(contains(&set("1:4294967295"), 4_000_000_000, 10));
        assert!(!contains(&set("*"), 9, 10));
    }
}
