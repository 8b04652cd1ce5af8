//! Writing IMAP strings (RFC 3501 4.3): quoted when short and plain, a literal otherwise.

pub(crate) fn literal(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
}

/// A string: quoted if every octet may be, a literal if not.
pub(crate) fn string(out: &mut Vec<u8>, data: &[u8]) {
    let quotable = data.len() < 1000 && data.iter().all(|b| (0x20..0x7f).contains(b));
    if quotable {
        out.push(b'"');
        for b in data {
            if *b == b'"' || *b == b'\\' {
                out.push(b'\\');
            }
            out.push(*b);
        }
        out.push(b'"');
    } else {
        literal(out, data);
    }
}

pub(crate) fn nstring(out: &mut Vec<u8>, data: Option<&[u8]>) {
    match data {
        Some(d) => string(out, d),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// A mailbox name for LIST/STATUS: quoted (names here are plain).
pub(crate) fn mailbox(out: &mut Vec<u8>, name: &str) {
    string(out, name.as_bytes());
}

/// INTERNALDATE's `date-time`: `"17-Jul-1996 02:44:25 +0000"`.
pub(crate) fn date_time(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.format("%d-%b-%Y %H:%M:%S +0000").to_string(),
        None => "01-Jan-1970 00:00:00 +0000".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings() {
        let mut out = Vec::new();
        string(&mut out, b"a \"b\"");
        out.push(b' ');
        string(&mut out, "é".as_bytes());
        assert_eq!(out, "\"a \\\"b\\\"\" {2}\r\né".as_bytes());
        assert_eq!(date_time(0), "01-Jan-1970 00:00:00 +0000");
    }
}
