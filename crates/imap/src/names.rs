//! Mailbox names: the client's name for a folder (INBOX case-insensitive, RFC 3501 5.1) and LIST
//! patterns.

use imap_codec::imap_types::mailbox::Mailbox;

pub(crate) fn folder_name(m: &Mailbox) -> String {
    match m {
        Mailbox::Inbox => "INBOX".to_string(),
        Mailbox::Other(o) => {
            let name = String::from_utf8_lossy(o.as_ref()).into_owned();
            if name.eq_ignore_ascii_case("INBOX") {
                "INBOX".to_string()
            } else {
                name
            }
        }
    }
}

/// LIST wildcards (RFC 3501 6.3.8): `*` matches anything, `%` anything but the hierarchy delimiter.
pub(crate) fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| wildcard(rest, &name[i..])),
        Some((b'%', rest)) => (0..=name.len())
            .take_while(|i| *i == 0 || name[i - 1] != b'/')
            .any(|i| wildcard(rest, &name[i..])),
        Some((c, rest)) => name
            .split_first()
            .is_some_and(|(n, nrest)| n.eq_ignore_ascii_case(c) && wildcard(rest, nrest)),
    }
}

#[cfg(test)]
mod tests {
    use super::wildcard;

    #[test]
    fn list_wildcards() {
        assert!(wildcard(b"*", b"INBOX"));
        assert!(wildcard(b"%", b"Sent"));
        assert!(!wildcard(b"%", b"a/b"));
        assert!(wildcard(b"inbox", b"INBOX"));
        assert!(wildcard(b"S*", b"Sent"));
        assert!(!wildcard(b"S*", b"INBOX"));
    }
}
