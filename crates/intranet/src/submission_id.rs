//! The fabric id of a submitted message.
//!
//! Submission writes each local recipient's INBOX, the sender's Sent copy and the `outbound` item at
//! once, on several stores; when one write fails the client gets 451 and resends, but the writes that
//! succeeded stay. With a fresh id per session every resend added one more copy to the mailboxes that
//! were reachable (`fabric chaos` found 7 copies of one message during a site outage). So a message
//! that carries a `Message-ID` gets an id derived from who sent exactly what to whom: the resend of
//! the same message names the same id, and the store's exactly-once rule per (user, folder, id) and
//! the transfer's archive check turn the writes already done into no-ops.
//!
//! RFC 5322 3.6.4: a Message-ID names one message; the same bytes under the same Message-ID from the
//! same user to the same recipients are a resend of it, never a new message. A message without one
//! (a bare test client) keeps a fresh UUIDv7 per session, as before.

use sha2::{Digest, Sha256};

/// Header lines scanned for `Message-ID` at most (the header block ends earlier in practice).
const MAX_HEADER_LINES: usize = 1000;

/// The id for `message` sent by `user` as `from` to `rcpts`: derived (32 hex digits, like a UUID's
/// simple form) when the message has a Message-ID header, else a fresh UUIDv7.
pub fn submission_id(user: &str, from: &str, rcpts: &[String], message: &[u8]) -> String {
    if !has_message_id(message) {
        return uuid::Uuid::now_v7().simple().to_string();
    }
    let mut sorted: Vec<String> = rcpts.iter().map(|r| r.to_ascii_lowercase()).collect();
    sorted.sort();
    sorted.dedup();
    let mut h = Sha256::new();
    h.update(b"fabric-submission-v1\0");
    for part in [user.to_ascii_lowercase(), from.to_ascii_lowercase()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for r in &sorted {
        h.update(r.as_bytes());
        h.update([0]);
    }
    h.update((message.len() as u64).to_be_bytes());
    h.update(message);
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the header block (up to the first empty line) has a `Message-ID:` field.
fn has_message_id(message: &[u8]) -> bool {
    message
        .split(|b| *b == b'\n')
        .take(MAX_HEADER_LINES)
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .take_while(|l| !l.is_empty())
        .any(|l| l.len() > 11 && l[..11].eq_ignore_ascii_case(b"message-id:"))
}

#[cfg(test)]
mod tests {
    use super::submission_id;

    const WITH: &[u8] = b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n";
    const WITHOUT: &[u8] = b"Subject: x\r\n\r\nMessage-ID: <in the body>\r\n";

    fn rcpts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_resend_of_the_same_message_gets_the_same_id() {
        let a = submission_id(
            "ann@x.example",
            "ann@x.example",
            &rcpts(&["b@y", "c@z"]),
            WITH,
        );
        let b = submission_id(
            "ann@x.example",
            "ann@x.example",
            &rcpts(&["C@z", "b@y"]),
            WITH,
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn anything_else_that_differs_gives_another_id() {
        let base = submission_id("ann@x.example", "ann@x.example", &rcpts(&["b@y"]), WITH);
        assert_ne!(
            base,
            submission_id("bob@x.example", "bob@x.example", &rcpts(&["b@y"]), WITH)
        );
        assert_ne!(
            base,
            submission_id("ann@x.example", "ann@x.example", &rcpts(&["c@y"]), WITH)
        );
        let other = b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody!\r\n";
        assert_ne!(
            base,
            submission_id("ann@x.example", "ann@x.example", &rcpts(&["b@y"]), other)
        );
    }

    #[test]
    fn without_a_message_id_every_session_gets_a_fresh_id() {
        let a = submission_id("ann@x.example", "ann@x.example", &rcpts(&["b@y"]), WITHOUT);
        let b = submission_id("ann@x.example", "ann@x.example", &rcpts(&["b@y"]), WITHOUT);
        assert_ne!(a, b);
    }
}
