//! Relay control over a real socket: nothing relays without a relay network or AUTH.

use crate::common::*;

/// Issue #4 item 4: with no relay networks and no AUTH, no address form that has fooled relays
/// gets through, and nothing is queued; a plain local address is the control.
#[test]
fn open_relay_matrix_refuses_every_trick() {
    let s = Sluice::start(
        "[relay]\nnetworks = []\n[local]\ndomains = [\"local.test\"]\nmailboxes = false\n[delivery]\nenabled = false\n",
    );
    let mut c = Client::ehlo(s.smtp);
    assert_eq!(code(&c.cmd("MAIL FROM:<a@example.com>")), 250);
    for rcpt in [
        "<user%other.test@local.test>",     // percent hack
        "<other.test!user@local.test>",     // bang path
        "<\"user@other.test\"@local.test>", // quoted @
        "<\"user%other.test\"@local.test>", // quoted percent hack
        "<@local.test:user@other.test>",    // source route (RFC 5321 C: the route is ignored)
        "<@local.test,@relay.test:user@other.test>",
        "<user@other.test.>",           // trailing dot
        "<user@local.test.other.test>", // a local domain as a prefix
        "<user@[192.0.2.1]>",           // IPv4 literal
        "<user@[IPv6:2001:db8::1]>",    // IPv6 literal
        "<user@other.test>",
    ] {
        let r = c.cmd(&format!("RCPT TO:{rcpt}"));
        assert!(r.starts_with("554 5.7.1") || r.starts_with("501 "), "{rcpt} -> {r}");
    }
    let r = c.cmd("DATA");
    assert!(r.starts_with("554 "), "no valid recipient, no data: {r}");
    assert!(s.queue_list().is_empty(), "nothing queued");
    // The control: a plain local address is accepted (domains are case-insensitive).
    assert_eq!(code(&c.cmd("RCPT TO:<user@LOCAL.test>")), 250);
}
