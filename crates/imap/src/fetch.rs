//! Rendering the data items of one FETCH response (RFC 3501 6.4.5 and 7.4.2).

use imap_codec::imap_types::fetch::{
    Macro, MacroOrMessageDataItemNames, MessageDataItemName, Part, Section,
};

use crate::MessageMeta;
use crate::mime::{self, Kind, Parsed};
use crate::write::{date_time, literal};

/// The items a FETCH asked for, macros expanded.
pub(crate) fn items<'a>(m: &MacroOrMessageDataItemNames<'a>) -> Vec<MessageDataItemName<'a>> {
    match m {
        MacroOrMessageDataItemNames::Macro(Macro::All) => vec![
            MessageDataItemName::Flags,
            MessageDataItemName::InternalDate,
            MessageDataItemName::Rfc822Size,
            MessageDataItemName::Envelope,
        ],
        MacroOrMessageDataItemNames::Macro(Macro::Fast) => vec![
            MessageDataItemName::Flags,
            MessageDataItemName::InternalDate,
            MessageDataItemName::Rfc822Size,
        ],
        MacroOrMessageDataItemNames::Macro(Macro::Full) => vec![
            MessageDataItemName::Flags,
            MessageDataItemName::InternalDate,
            MessageDataItemName::Rfc822Size,
            MessageDataItemName::Envelope,
            MessageDataItemName::Body,
        ],
        MacroOrMessageDataItemNames::Macro(_) => vec![MessageDataItemName::Flags],
        MacroOrMessageDataItemNames::MessageDataItemNames(v) => v.clone(),
    }
}

/// True when an item needs the message's bytes.
pub(crate) fn needs_body(item: &MessageDataItemName) -> bool {
    !matches!(
        item,
        MessageDataItemName::Flags
            | MessageDataItemName::InternalDate
            | MessageDataItemName::Rfc822Size
            | MessageDataItemName::Uid
    )
}

/// True when an item needs the message's bytes themselves, not only what `mime::parse` computed from
/// them (ENVELOPE, BODY, BODYSTRUCTURE are served from the computed structure).
pub(crate) fn needs_raw(item: &MessageDataItemName) -> bool {
    needs_body(item)
        && !matches!(
            item,
            MessageDataItemName::Envelope
                | MessageDataItemName::Body
                | MessageDataItemName::BodyStructure
        )
}

/// True when an item needs the MIME structure (ENVELOPE, BODY, sections below the top).
pub(crate) fn needs_parse(item: &MessageDataItemName) -> bool {
    match item {
        MessageDataItemName::Body
        | MessageDataItemName::BodyStructure
        | MessageDataItemName::Envelope => true,
        MessageDataItemName::BodyExt { section, .. } => !matches!(
            section,
            None | Some(Section::Header(None))
                | Some(Section::Text(None))
                | Some(Section::HeaderFields(None, _))
                | Some(Section::HeaderFieldsNot(None, _))
        ),
        _ => false,
    }
}

/// True when fetching the item sets `\Seen` (RFC 3501 6.4.5: BODY[...] without PEEK, RFC822,
/// RFC822.TEXT).
pub(crate) fn sets_seen(item: &MessageDataItemName) -> bool {
    matches!(
        item,
        MessageDataItemName::BodyExt { peek: false, .. }
            | MessageDataItemName::Rfc822
            | MessageDataItemName::Rfc822Text
    )
}

pub(crate) fn flags(out: &mut Vec<u8>, flags: &[String]) {
    out.extend_from_slice(b"FLAGS (");
    for (i, f) in flags.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(f.as_bytes());
    }
    out.push(b')');
}

/// The message's header, split where the empty line ends (for messages mail-parser did not read).
fn split(raw: &[u8]) -> usize {
    raw.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
        .unwrap_or(raw.len())
}

/// `* n FETCH (...)\r\n` for one message. `include_flags` adds FLAGS even if not asked for (after
/// an implicit `\Seen`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn render(
    out: &mut Vec<u8>,
    seq: usize,
    meta: &MessageMeta,
    items: &[MessageDataItemName],
    uid_fetch: bool,
    include_flags: bool,
    raw: Option<&[u8]>,
    parsed: Option<&Parsed>,
) {
    out.extend_from_slice(format!("* {seq} FETCH (").as_bytes());
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !first {
            out.push(b' ');
        }
        first = false;
    };
    let asked_uid = items.iter().any(|i| matches!(i, MessageDataItemName::Uid));
    if uid_fetch && !asked_uid {
        sep(out);
        out.extend_from_slice(format!("UID {}", meta.uid).as_bytes());
    }
    let asked_flags = items
        .iter()
        .any(|i| matches!(i, MessageDataItemName::Flags));
    if include_flags && !asked_flags {
        sep(out);
        flags(out, &meta.flags);
    }
    let empty: &[u8] = b"";
    let raw_bytes = raw.unwrap_or(empty);
    for item in items {
        sep(out);
        match item {
            MessageDataItemName::Uid => {
                out.extend_from_slice(format!("UID {}", meta.uid).as_bytes())
            }
            MessageDataItemName::Flags => flags(out, &meta.flags),
            MessageDataItemName::InternalDate => out.extend_from_slice(
                format!("INTERNALDATE \"{}\"", date_time(meta.internal_date_ms)).as_bytes(),
            ),
            MessageDataItemName::Rfc822Size => out.extend_from_slice(
                format!(
                    "RFC822.SIZE {}",
                    raw.map(|r| r.len() as u64).unwrap_or(meta.size)
                )
                .as_bytes(),
            ),
            MessageDataItemName::Envelope => {
                out.extend_from_slice(b"ENVELOPE ");
                match parsed {
                    Some(p) => out.extend_from_slice(&p.envelope),
                    None => out.extend_from_slice(b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"),
                }
            }
            MessageDataItemName::Body => {
                out.extend_from_slice(b"BODY ");
                if let Some(p) = parsed {
                    out.extend_from_slice(&p.body);
                }
            }
            MessageDataItemName::BodyStructure => {
                out.extend_from_slice(b"BODYSTRUCTURE ");
                if let Some(p) = parsed {
                    out.extend_from_slice(&p.bodystructure);
                }
            }
            MessageDataItemName::Rfc822 => {
                out.extend_from_slice(b"RFC822 ");
                literal(out, raw_bytes);
            }
            MessageDataItemName::Rfc822Header => {
                out.extend_from_slice(b"RFC822.HEADER ");
                literal(out, &raw_bytes[..split(raw_bytes)]);
            }
            MessageDataItemName::Rfc822Text => {
                out.extend_from_slice(b"RFC822.TEXT ");
                literal(out, &raw_bytes[split(raw_bytes)..]);
            }
            MessageDataItemName::BodyExt {
                section, partial, ..
            } => {
                out.extend_from_slice(b"BODY[");
                if let Some(s) = section {
                    section_spec(out, s);
                }
                out.push(b']');
                let data = section_data(raw_bytes, parsed, section.as_ref());
                let data: &[u8] = &data;
                match partial {
                    Some((start, len)) => {
                        out.extend_from_slice(format!("<{start}> ").as_bytes());
                        let s = (*start as usize).min(data.len());
                        let e = s.saturating_add(len.get() as usize).min(data.len());
                        literal(out, &data[s..e]);
                    }
                    None => {
                        out.push(b' ');
                        literal(out, data);
                    }
                }
            }
        }
    }
    out.extend_from_slice(b")\r\n");
}

fn part_spec(out: &mut Vec<u8>, p: &Part) {
    let nums: Vec<String> = p.0.as_ref().iter().map(|n| n.get().to_string()).collect();
    out.extend_from_slice(nums.join(".").as_bytes());
}

fn section_spec(out: &mut Vec<u8>, s: &Section) {
    let prefix = |out: &mut Vec<u8>, p: &Option<Part>| {
        if let Some(p) = p {
            part_spec(out, p);
            out.push(b'.');
        }
    };
    match s {
        Section::Part(p) => part_spec(out, p),
        Section::Header(p) => {
            prefix(out, p);
            out.extend_from_slice(b"HEADER");
        }
        Section::Text(p) => {
            prefix(out, p);
            out.extend_from_slice(b"TEXT");
        }
        Section::Mime(p) => {
            part_spec(out, p);
            out.extend_from_slice(b".MIME");
        }
        Section::HeaderFields(p, names) | Section::HeaderFieldsNot(p, names) => {
            prefix(out, p);
            out.extend_from_slice(if matches!(s, Section::HeaderFields(..)) {
                b"HEADER.FIELDS ("
            } else {
                b"HEADER.FIELDS.NOT ("
            });
            for (i, n) in names.as_ref().iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(&n.as_ref().to_ascii_uppercase());
            }
            out.push(b')');
        }
    }
}

/// The header and body ranges of the message a section prefix names (the top message, or the
/// message/rfc822 part at `p`).
fn message_at<'a>(
    raw: &'a [u8],
    parsed: Option<&'a Parsed>,
    p: Option<&Part>,
) -> Option<(&'a [u8], &'a [u8])> {
    match (p, parsed) {
        (None, _) => {
            let h = split(raw);
            Some((&raw[..h], &raw[h..]))
        }
        (Some(p), Some(parsed)) => {
            let e = mime::find(
                &parsed.root,
                p.0.as_ref()
                    .iter()
                    .map(|n| n.get())
                    .collect::<Vec<_>>()
                    .as_slice(),
            )?;
            match &e.kind {
                Kind::Message(inner) => {
                    Some((raw.get(inner.header.clone())?, raw.get(inner.body.clone())?))
                }
                _ => None,
            }
        }
        (Some(_), None) => None,
    }
}

fn section_data<'a>(
    raw: &'a [u8],
    parsed: Option<&'a Parsed>,
    section: Option<&Section>,
) -> std::borrow::Cow<'a, [u8]> {
    use std::borrow::Cow;
    let empty: &[u8] = b"";
    let Some(section) = section else {
        return Cow::Borrowed(raw);
    };
    let path = |p: &Part| p.0.as_ref().iter().map(|n| n.get()).collect::<Vec<u32>>();
    match section {
        Section::Part(p) => Cow::Borrowed(
            parsed
                .and_then(|pa| mime::find(&pa.root, &path(p)))
                .and_then(|e| raw.get(e.body.clone()))
                .unwrap_or(empty),
        ),
        Section::Mime(p) => Cow::Borrowed(
            parsed
                .and_then(|pa| mime::find(&pa.root, &path(p)))
                .and_then(|e| raw.get(e.header.clone()))
                .unwrap_or(empty),
        ),
        Section::Header(p) => Cow::Borrowed(
            message_at(raw, parsed, p.as_ref())
                .map(|m| m.0)
                .unwrap_or(empty),
        ),
        Section::Text(p) => Cow::Borrowed(
            message_at(raw, parsed, p.as_ref())
                .map(|m| m.1)
                .unwrap_or(empty),
        ),
        Section::HeaderFields(p, names) | Section::HeaderFieldsNot(p, names) => {
            let keep = matches!(section, Section::HeaderFields(..));
            let header = message_at(raw, parsed, p.as_ref())
                .map(|m| m.0)
                .unwrap_or(empty);
            let names: Vec<&[u8]> = names.as_ref().iter().map(|n| n.as_ref()).collect();
            Cow::Owned(filter_fields(header, &names, keep))
        }
    }
}

/// The header fields named (or, with `keep` false, not named) in `names`, then the empty line.
fn filter_fields(header: &[u8], names: &[&[u8]], keep: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut take = false;
    for line in header.split_inclusive(|b| *b == b'\n') {
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content.is_empty() {
            break;
        }
        if !content.starts_with(b" ") && !content.starts_with(b"\t") {
            let name = content
                .split(|b| *b == b':')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            let named = names.iter().any(|n| n.eq_ignore_ascii_case(name));
            take = named == keep;
        }
        if take {
            out.extend_from_slice(content);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields() {
        let h = b"Subject: a\r\n b\r\nFrom: x@y\r\nTo: z@w\r\n\r\n";
        assert_eq!(
            filter_fields(h, &[b"subject"], true),
            b"Subject: a\r\n b\r\n\r\n"
        );
        assert_eq!(
            filter_fields(h, &[b"subject", b"to"], false),
            b"From: x@y\r\n\r\n"
        );
    }
}
