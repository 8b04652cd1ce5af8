//! The fabric message id across a hand-over. A relay server keeps mail for a site that cannot take it
//! and later hands it over over SMTP, maybe more than once (a crash between the primary's 250 and the
//! relay's ack). It names the message's fabric id in an `X-Fabric-Id:` header at the top; a mail server
//! of the fabric takes that id (and so de-duplicates the repeat, invariant 3) only from a relay's
//! address: anyone else's header is an ordinary header and trusted for nothing.

/// The header's name.
pub const HEADER: &str = "X-Fabric-Id";

/// The header line (with CRLF) naming `id`.
pub fn header_line(id: &str) -> String {
    format!("{HEADER}: {id}\r\n")
}

/// Whether `id` is acceptable as a fabric message id: 1 to 64 of `[A-Za-z0-9.-]`.
pub fn valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// The id named by the first `X-Fabric-Id:` header in the header section of `message`, if valid.
pub fn find(message: &[u8]) -> Option<String> {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(message.len());
    message[..end]
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case(HEADER)
                .then(|| value.trim().to_string())
        })
        .next()
        .filter(|id| valid(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_id_in_the_header_section_only() {
        let m = b"Received: from x\r\n\tby y\r\nx-fabric-id:  0192abc.r1 \r\nSubject: s\r\n\r\nX-Fabric-Id: later\r\n";
        assert_eq!(find(m).as_deref(), Some("0192abc.r1"));
        assert_eq!(find(b"Subject: s\r\n\r\nX-Fabric-Id: body\r\n"), None);
        assert_eq!(find(b"X-Fabric-Id: bad id!\r\n\r\n"), None);
        assert_eq!(
            find(&[b"X-Fabric-Id: ", &[b'a'; 65][..], b"\r\n\r\n"].concat()),
            None
        );
        assert_eq!(find(header_line("abc").as_bytes()).as_deref(), Some("abc"));
    }
}
