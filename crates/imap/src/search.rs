//! SEARCH (RFC 3501 6.4.4) evaluated against one message: flags, sizes, dates, sequence sets, and
//! substrings (case-insensitive) of header fields, body and text.

use chrono::NaiveDate;
use imap_codec::imap_types::search::SearchKey;

use crate::MessageMeta;
use crate::seqset;

/// What a key is evaluated against.
pub(crate) struct Candidate<'a> {
    /// 0-based index in the view (sequence number - 1).
    pub index: usize,
    pub meta: &'a MessageMeta,
    pub all: &'a [MessageMeta],
    /// The message bytes, when the search needs them.
    pub raw: Option<&'a [u8]>,
}

/// True when the key looks into headers or bodies.
pub(crate) fn needs_body(key: &SearchKey) -> bool {
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().any(needs_body),
        SearchKey::Not(k) => needs_body(k),
        SearchKey::Or(a, b) => needs_body(a) || needs_body(b),
        SearchKey::Bcc(_)
        | SearchKey::Body(_)
        | SearchKey::Cc(_)
        | SearchKey::From(_)
        | SearchKey::Header(..)
        | SearchKey::Subject(_)
        | SearchKey::Text(_)
        | SearchKey::To(_)
        | SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_) => true,
        _ => false,
    }
}

fn has(meta: &MessageMeta, flag: &str) -> bool {
    meta.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
}

fn internal_date(meta: &MessageMeta) -> Option<NaiveDate> {
    chrono::DateTime::from_timestamp_millis(meta.internal_date_ms).map(|t| t.date_naive())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    let needle = needle.to_ascii_lowercase();
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(&needle))
}

fn header_end(raw: &[u8]) -> usize {
    raw.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
        .unwrap_or(raw.len())
}

/// The unfolded values of the header fields called `name`.
fn header_values(raw: &[u8], name: &[u8]) -> Vec<Vec<u8>> {
    let header = &raw[..header_end(raw)];
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in header.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            if let Some(c) = current.as_mut() {
                c.extend_from_slice(line);
            }
            continue;
        }
        if let Some(c) = current.take() {
            out.push(c);
        }
        if let Some(colon) = line.iter().position(|b| *b == b':')
            && line[..colon].trim_ascii().eq_ignore_ascii_case(name)
        {
            current = Some(line[colon + 1..].to_vec());
        }
    }
    if let Some(c) = current {
        out.push(c);
    }
    out
}

fn header_has(raw: Option<&[u8]>, name: &[u8], needle: &[u8]) -> bool {
    raw.is_some_and(|r| header_values(r, name).iter().any(|v| contains(v, needle)))
}

fn sent_date(raw: Option<&[u8]>) -> Option<NaiveDate> {
    let v = header_values(raw?, b"date").into_iter().next()?;
    let text = String::from_utf8_lossy(&v).trim().to_string();
    chrono::DateTime::parse_from_rfc2822(&text)
        .ok()
        .map(|d| d.date_naive())
}

pub(crate) fn matches(key: &SearchKey, c: &Candidate) -> bool {
    let m = c.meta;
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().all(|k| matches(k, c)),
        SearchKey::Not(k) => !matches(k, c),
        SearchKey::Or(a, b) => matches(a, c) || matches(b, c),
        SearchKey::All => true,
        SearchKey::SequenceSet(set) => {
            seqset::resolve_lenient(set, c.all, false).contains(&c.index)
        }
        SearchKey::Uid(set) => seqset::resolve_lenient(set, c.all, true).contains(&c.index),
        SearchKey::Answered => has(m, "\\Answered"),
        SearchKey::Unanswered => !has(m, "\\Answered"),
        SearchKey::Deleted => has(m, "\\Deleted"),
        SearchKey::Undeleted => !has(m, "\\Deleted"),
        SearchKey::Draft => has(m, "\\Draft"),
        SearchKey::Undraft => !has(m, "\\Draft"),
        SearchKey::Flagged => has(m, "\\Flagged"),
        SearchKey::Unflagged => !has(m, "\\Flagged"),
        SearchKey::Seen => has(m, "\\Seen"),
        SearchKey::Unseen => !has(m, "\\Seen"),
        // No session here ever sees a message first: \Recent is never set.
        SearchKey::Recent | SearchKey::New => false,
        SearchKey::Old => true,
        SearchKey::Keyword(k) => has(m, k.as_ref()),
        SearchKey::Unkeyword(k) => !has(m, k.as_ref()),
        SearchKey::Larger(n) => m.size > u64::from(*n),
        SearchKey::Smaller(n) => m.size < u64::from(*n),
        SearchKey::Before(d) => internal_date(m).is_some_and(|x| x < *d.as_ref()),
        SearchKey::On(d) => internal_date(m).is_some_and(|x| x == *d.as_ref()),
        SearchKey::Since(d) => internal_date(m).is_some_and(|x| x >= *d.as_ref()),
        SearchKey::SentBefore(d) => sent_date(c.raw).is_some_and(|x| x < *d.as_ref()),
        SearchKey::SentOn(d) => sent_date(c.raw).is_some_and(|x| x == *d.as_ref()),
        SearchKey::SentSince(d) => sent_date(c.raw).is_some_and(|x| x >= *d.as_ref()),
        SearchKey::From(s) => header_has(c.raw, b"from", s.as_ref()),
        SearchKey::To(s) => header_has(c.raw, b"to", s.as_ref()),
        SearchKey::Cc(s) => header_has(c.raw, b"cc", s.as_ref()),
        SearchKey::Bcc(s) => header_has(c.raw, b"bcc", s.as_ref()),
        SearchKey::Subject(s) => header_has(c.raw, b"subject", s.as_ref()),
        SearchKey::Header(name, s) => header_has(c.raw, name.as_ref(), s.as_ref()),
        SearchKey::Body(s) => c
            .raw
            .is_some_and(|r| contains(&r[header_end(r)..], s.as_ref())),
        SearchKey::Text(s) => c.raw.is_some_and(|r| contains(r, s.as_ref())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lookup_unfolds() {
        let raw = b"Subject: hello\r\n  world\r\nFrom: a@b\r\n\r\nbody text\r\n";
        assert!(header_has(Some(raw), b"subject", b"HELLO  WORLD"));
        assert!(!header_has(Some(raw), b"subject", b"body"));
        assert!(header_has(Some(raw), b"FROM", b"a@b"));
    }
}
