//! A message's MIME structure for FETCH, computed once per message with mail-parser: the byte
//! ranges of every entity (for `BODY[section]`), and the ENVELOPE, BODY and BODYSTRUCTURE strings of
//! RFC 3501 7.4.2.

use std::ops::Range;

use mail_parser::{
    Addr, Address, HeaderName, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders,
    PartType,
};

use crate::write::{nstring, string};

/// One MIME entity: where its header and body are in the message's bytes.
#[derive(Debug, Clone)]
pub(crate) struct Entity {
    pub header: Range<usize>,
    pub body: Range<usize>,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Leaf,
    Multipart(Vec<Entity>),
    /// message/rfc822: the encapsulated message's top entity.
    Message(Box<Entity>),
}

/// What FETCH needs of a message besides its bytes.
#[derive(Debug, Clone)]
pub(crate) struct Parsed {
    pub root: Entity,
    pub envelope: Vec<u8>,
    pub body: Vec<u8>,
    pub bodystructure: Vec<u8>,
}

/// Where the header ends (after the empty line), for messages mail-parser cannot read.
fn header_end(raw: &[u8]) -> usize {
    if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        return i + 4;
    }
    if let Some(i) = raw.windows(2).position(|w| w == b"\n\n") {
        return i + 2;
    }
    raw.len()
}

pub(crate) fn parse(raw: &[u8]) -> Parsed {
    let parser = MessageParser::new();
    if let Some(msg) = parser.parse(raw)
        && !msg.parts.is_empty()
    {
        let mut body = Vec::new();
        let mut bodystructure = Vec::new();
        let mut envelope = Vec::new();
        write_envelope(&mut envelope, &msg, raw);
        let root = entity(&msg, raw, 0, &mut body, false, 0);
        entity(&msg, raw, 0, &mut bodystructure, true, 0);
        return Parsed {
            root,
            envelope,
            body,
            bodystructure,
        };
    }
    let end = header_end(raw);
    let leaf = |out: &mut Vec<u8>| {
        out.extend_from_slice(
            format!(
                "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" {} {})",
                raw.len() - end,
                lines(&raw[end..])
            )
            .as_bytes(),
        )
    };
    let (mut body, mut bodystructure) = (Vec::new(), Vec::new());
    leaf(&mut body);
    leaf(&mut bodystructure);
    Parsed {
        root: Entity {
            header: 0..end,
            body: end..raw.len(),
            kind: Kind::Leaf,
        },
        envelope: b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)".to_vec(),
        body,
        bodystructure,
    }
}

fn lines(data: &[u8]) -> usize {
    data.iter().filter(|b| **b == b'\n').count()
}

fn range(raw: &[u8], from: u32, to: u32) -> Range<usize> {
    let to = (to as usize).min(raw.len());
    (from as usize).min(to)..to
}

/// Builds the entity of part `id` of `msg` and writes its BODY (or BODYSTRUCTURE with `ext`).
fn entity(
    msg: &Message,
    raw: &[u8],
    id: usize,
    out: &mut Vec<u8>,
    ext: bool,
    depth: usize,
) -> Entity {
    let Some(part) = msg.parts.get(id) else {
        out.extend_from_slice(b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)");
        return Entity {
            header: 0..0,
            body: 0..0,
            kind: Kind::Leaf,
        };
    };
    let header = range(raw, part.offset_header, part.offset_body);
    let body = range(raw, part.offset_body, part.offset_end);
    let ct = part.content_type();
    let (ctype, subtype) = match ct {
        Some(c) => (
            c.c_type.to_ascii_uppercase(),
            c.c_subtype
                .as_deref()
                .unwrap_or(if c.c_type.eq_ignore_ascii_case("text") {
                    "PLAIN"
                } else {
                    "OCTET-STREAM"
                })
                .to_ascii_uppercase(),
        ),
        None => ("TEXT".to_string(), "PLAIN".to_string()),
    };
    match &part.body {
        PartType::Multipart(children) if depth < 20 => {
            out.push(b'(');
            let mut kids = Vec::new();
            for child in children {
                kids.push(entity(msg, raw, *child as usize, out, ext, depth + 1));
            }
            if kids.is_empty() {
                out.extend_from_slice(b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)");
            }
            out.push(b' ');
            string(out, subtype.as_bytes());
            if ext {
                out.push(b' ');
                params(out, part);
                out.push(b' ');
                disposition(out, part);
                out.extend_from_slice(b" NIL NIL");
            }
            out.push(b')');
            Entity {
                header,
                body,
                kind: Kind::Multipart(kids),
            }
        }
        PartType::Message(nested)
            if depth < 20
                && nested.raw_message.len() == raw.len()
                && nested.raw_message.as_ptr() == raw.as_ptr() =>
        {
            basic_fields(out, part, "MESSAGE", "RFC822", body.len());
            out.push(b' ');
            write_envelope(out, nested, raw);
            out.push(b' ');
            let inner = entity(nested, raw, 0, out, ext, depth + 1);
            out.extend_from_slice(format!(" {}", lines(&raw[body.clone()])).as_bytes());
            if ext {
                leaf_ext(out, part);
            }
            out.push(b')');
            Entity {
                header,
                body,
                kind: Kind::Message(Box::new(inner)),
            }
        }
        _ => {
            let (ctype, subtype) = if ctype == "MESSAGE" || ctype == "MULTIPART" {
                ("APPLICATION".to_string(), "OCTET-STREAM".to_string())
            } else {
                (ctype, subtype)
            };
            basic_fields(out, part, &ctype, &subtype, body.len());
            if ctype == "TEXT" {
                out.extend_from_slice(format!(" {}", lines(&raw[body.clone()])).as_bytes());
            }
            if ext {
                leaf_ext(out, part);
            }
            out.push(b')');
            Entity {
                header,
                body,
                kind: Kind::Leaf,
            }
        }
    }
}

/// `("TYPE" "SUBTYPE" (params) id description "ENCODING" size` (without the closing parenthesis).
fn basic_fields(out: &mut Vec<u8>, part: &MessagePart, ctype: &str, subtype: &str, size: usize) {
    out.push(b'(');
    string(out, ctype.as_bytes());
    out.push(b' ');
    string(out, subtype.as_bytes());
    out.push(b' ');
    let has_params = part
        .content_type()
        .and_then(|c| c.attributes())
        .is_some_and(|a| !a.is_empty());
    if has_params {
        params(out, part);
    } else if ctype == "TEXT" {
        out.extend_from_slice(b"(\"CHARSET\" \"US-ASCII\")");
    } else {
        out.extend_from_slice(b"NIL");
    }
    out.push(b' ');
    nstring(out, part.content_id().map(str::as_bytes));
    out.push(b' ');
    nstring(out, part.content_description().map(str::as_bytes));
    out.push(b' ');
    let enc = part
        .content_transfer_encoding()
        .unwrap_or("7BIT")
        .to_ascii_uppercase();
    string(out, enc.as_bytes());
    out.extend_from_slice(format!(" {size}").as_bytes());
}

/// body-ext-1part: md5, disposition, language, location.
fn leaf_ext(out: &mut Vec<u8>, part: &MessagePart) {
    out.extend_from_slice(b" NIL ");
    disposition(out, part);
    out.extend_from_slice(b" NIL NIL");
}

fn params(out: &mut Vec<u8>, part: &MessagePart) {
    let attrs = part.content_type().and_then(|c| c.attributes());
    match attrs {
        Some(a) if !a.is_empty() => {
            out.push(b'(');
            for (i, at) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                string(out, at.name.to_ascii_uppercase().as_bytes());
                out.push(b' ');
                string(out, at.value.as_bytes());
            }
            out.push(b')');
        }
        _ => out.extend_from_slice(b"NIL"),
    }
}

fn disposition(out: &mut Vec<u8>, part: &MessagePart) {
    match part.content_disposition() {
        Some(d) => {
            out.push(b'(');
            string(out, d.c_type.to_ascii_uppercase().as_bytes());
            out.push(b' ');
            match d.attributes() {
                Some(a) if !a.is_empty() => {
                    out.push(b'(');
                    for (i, at) in a.iter().enumerate() {
                        if i > 0 {
                            out.push(b' ');
                        }
                        string(out, at.name.to_ascii_uppercase().as_bytes());
                        out.push(b' ');
                        string(out, at.value.as_bytes());
                    }
                    out.push(b')');
                }
                _ => out.extend_from_slice(b"NIL"),
            }
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
}

/// The raw value of a top-level header field, unfolded and trimmed (RFC 3501 wants it undecoded).
fn raw_header(msg: &Message, raw: &[u8], name: HeaderName) -> Option<Vec<u8>> {
    let part = msg.parts.first()?;
    let h = part.headers.iter().find(|h| h.name == name)?;
    let value = raw.get(h.offset_start as usize..h.offset_end as usize)?;
    let unfolded: Vec<u8> = value
        .iter()
        .copied()
        .filter(|b| *b != b'\r' && *b != b'\n')
        .collect();
    let trimmed = unfolded.trim_ascii();
    Some(trimmed.to_vec())
}

fn write_envelope(out: &mut Vec<u8>, msg: &Message, raw: &[u8]) {
    out.push(b'(');
    nstring(out, raw_header(msg, raw, HeaderName::Date).as_deref());
    out.push(b' ');
    nstring(out, raw_header(msg, raw, HeaderName::Subject).as_deref());
    let from = address_header(msg, HeaderName::From);
    for name in [
        HeaderName::From,
        HeaderName::Sender,
        HeaderName::ReplyTo,
        HeaderName::To,
        HeaderName::Cc,
        HeaderName::Bcc,
    ] {
        out.push(b' ');
        let value = match address_header(msg, name.clone()) {
            None if matches!(name, HeaderName::Sender | HeaderName::ReplyTo) => from,
            v => v,
        };
        addresses(out, value);
    }
    out.push(b' ');
    nstring(out, raw_header(msg, raw, HeaderName::InReplyTo).as_deref());
    out.push(b' ');
    nstring(out, raw_header(msg, raw, HeaderName::MessageId).as_deref());
    out.push(b')');
}

fn address_header<'a>(msg: &'a Message, name: HeaderName) -> Option<&'a Address<'a>> {
    match msg
        .parts
        .first()?
        .headers
        .iter()
        .find(|h| h.name == name)?
        .value
    {
        HeaderValue::Address(ref a) => Some(a),
        _ => None,
    }
}

fn addresses(out: &mut Vec<u8>, value: Option<&Address>) {
    let Some(value) = value else {
        out.extend_from_slice(b"NIL");
        return;
    };
    let start = out.len();
    out.push(b'(');
    match value {
        Address::List(list) => list.iter().for_each(|a| address(out, a)),
        Address::Group(groups) => {
            for g in groups {
                match &g.name {
                    Some(name) => {
                        out.extend_from_slice(b"(NIL NIL ");
                        string(out, encode_word(name).as_bytes());
                        out.extend_from_slice(b" NIL)");
                        g.addresses.iter().for_each(|a| address(out, a));
                        out.extend_from_slice(b"(NIL NIL NIL NIL)");
                    }
                    None => g.addresses.iter().for_each(|a| address(out, a)),
                }
            }
        }
    }
    if out.len() == start + 1 {
        out.truncate(start);
        out.extend_from_slice(b"NIL");
    } else {
        out.push(b')');
    }
}

fn address(out: &mut Vec<u8>, a: &Addr) {
    out.push(b'(');
    let name = a.name.as_deref().map(encode_word);
    nstring(out, name.as_deref().map(str::as_bytes));
    out.extend_from_slice(b" NIL ");
    let addr = a.address.as_deref().unwrap_or("");
    let (local, host) = match addr.rsplit_once('@') {
        Some((l, h)) => (l, Some(h)),
        None => (addr, None),
    };
    string(out, local.as_bytes());
    out.push(b' ');
    nstring(out, host.map(str::as_bytes));
    out.push(b')');
}

/// mail-parser decodes display names; IMAP sends them as in the header, so non-ASCII names go back
/// into an RFC 2047 encoded word.
fn encode_word(s: &str) -> String {
    if s.is_ascii() {
        return s.to_string();
    }
    use base64::Engine as _;
    format!(
        "=?utf-8?b?{}?=",
        base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
    )
}

/// The entity a part number names (RFC 3501 6.4.5): in a multipart, the n-th child; inside a
/// message/rfc822, the parts of the encapsulated message; `1` of a single-part entity is its body.
pub(crate) fn find<'a>(root: &'a Entity, path: &[u32]) -> Option<&'a Entity> {
    let mut at = root;
    for n in path {
        let n = *n as usize;
        at = match &at.kind {
            Kind::Multipart(kids) => kids.get(n.checked_sub(1)?)?,
            Kind::Message(inner) => match &inner.kind {
                Kind::Multipart(kids) => kids.get(n.checked_sub(1)?)?,
                _ if n == 1 => inner,
                _ => return None,
            },
            Kind::Leaf if n == 1 && std::ptr::eq(at, root) => at,
            Kind::Leaf => return None,
        };
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_structure_and_envelope() {
        let raw = b"From: Ann Example <ann@example.com>\r\nTo: bob@example.org\r\nSubject: hi\r\nMessage-ID: <1@x>\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--b--\r\n";
        let p = parse(raw);
        let env = String::from_utf8_lossy(&p.envelope).into_owned();
        assert!(
            env.contains("((\"Ann Example\" NIL \"ann\" \"example.com\"))"),
            "{env}"
        );
        assert!(env.contains("\"<1@x>\""), "{env}");
        let bs = String::from_utf8_lossy(&p.body).into_owned();
        assert!(bs.starts_with("((\"TEXT\" \"PLAIN\""), "{bs}");
        assert!(bs.contains("\"APPLICATION\" \"PDF\""), "{bs}");
        assert!(bs.ends_with(" \"MIXED\")"), "{bs}");
        let part2 = find(&p.root, &[2]).expect("part 2");
        assert_eq!(&raw[part2.body.clone()], b"AAAA");
        let part1 = find(&p.root, &[1]).expect("part 1");
        assert_eq!(&raw[part1.body.clone()], b"hello");
    }
}
