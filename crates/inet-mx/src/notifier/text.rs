//! What a notification says: the sender, the subject and the fabric message id, as one SMS text or
//! as a short notice mail. Everything taken from the incoming message is flattened to one line of
//! printable characters first, so nothing in it can add a header or end a line (no injection).

use std::time::SystemTime;

use base64::Engine;
use mail_parser::MessageParser;

/// The longest SMS text sent (two concatenated segments).
pub const MAX_SMS_CHARS: usize = 306;
/// The longest subject or sender kept.
const MAX_FIELD_CHARS: usize = 200;

/// One line of printable text: controls (CR, LF, TAB, NUL...) become spaces, runs of spaces one.
fn flatten(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        out.push(c);
    }
    let out = out.trim_end();
    if out.chars().count() > max {
        let cut: String = out.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        out.to_string()
    }
}

/// An unstructured header value: as is when ASCII, else an RFC 2047 encoded word.
fn header_text(s: &str) -> String {
    if s.is_ascii() {
        s.to_string()
    } else {
        format!(
            "=?utf-8?b?{}?=",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }
}

/// An address that is safe inside `<...>` of a header (the directory validated it; this checks).
fn safe_address(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 254
        && a.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | '"' | '\\' | ','))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub from: String,
    pub subject: String,
}

impl Summary {
    /// From the header section: the From address (else the envelope sender) and the Subject.
    pub fn read(headers: &[u8], envelope_from: Option<&str>) -> Summary {
        let parsed = MessageParser::default().parse_headers(headers);
        let from = parsed
            .as_ref()
            .and_then(|m| m.from())
            .and_then(|f| f.first())
            .and_then(|a| a.address())
            .map(str::to_string)
            .or_else(|| envelope_from.map(str::to_string))
            .unwrap_or_else(|| "<>".to_string());
        let subject = parsed
            .as_ref()
            .and_then(|m| m.subject())
            .unwrap_or("(no subject)")
            .to_string();
        Summary {
            from: flatten(&from, MAX_FIELD_CHARS),
            subject: flatten(&subject, MAX_FIELD_CHARS),
        }
    }

    /// The SMS: sender, subject and fabric id, within [`MAX_SMS_CHARS`] (the subject is shortened
    /// first: the id must survive, it is how the user finds the message).
    pub fn sms_text(&self, id: &str) -> String {
        let frame = |subject: &str| format!("New mail from {}: {subject} [id {id}]", self.from);
        let full = frame(&self.subject);
        let over = full.chars().count().saturating_sub(MAX_SMS_CHARS);
        if over == 0 {
            return full;
        }
        let keep = self.subject.chars().count().saturating_sub(over + 1);
        let short: String = self.subject.chars().take(keep).collect();
        frame(&format!("{short}…"))
    }

    /// The notice mail to the alternate address (headers and body, CRLF line ends).
    pub fn notice(&self, id: &str, rcpt: &str, alternate: &str, hostname: &str) -> String {
        let body = format!(
            "New mail has arrived in the mailbox {rcpt}.\r\n\r\n\
             From: {}\r\nSubject: {}\r\nFabric message id: {id}\r\n",
            self.from, self.subject
        );
        notice_mail(
            id,
            rcpt,
            alternate,
            hostname,
            &format!("New mail for {rcpt}: {}", self.subject),
            &body,
            Some(id),
        )
    }
}

/// The text of an SMS about the service itself: one flattened line within [`MAX_SMS_CHARS`].
pub fn sms(text: &str) -> String {
    flatten(text, MAX_SMS_CHARS)
}

/// A tag that is safe inside a Message-ID (letters, digits, `.`, `-`, `_`).
fn safe_tag(tag: &str) -> String {
    let t: String = tag
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(64)
        .collect();
    if t.is_empty() { "notice".into() } else { t }
}

/// A short notice mail to `alternate` about the mailbox `rcpt` (headers and body, CRLF line ends).
/// The subject is flattened to one line and every line of the body is flattened on its own, so
/// neither can add a header. `fabric_id` adds `X-Fabric-Message-Id` (a notice about one message).
pub fn notice_mail(
    tag: &str,
    rcpt: &str,
    alternate: &str,
    hostname: &str,
    subject: &str,
    body: &str,
    fabric_id: Option<&str>,
) -> String {
    let domain = rcpt
        .rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| safe_address(d))
        .unwrap_or(hostname);
    let to = if safe_address(alternate) {
        alternate
    } else {
        "undisclosed-recipients:;"
    };
    let date = httpdate::fmt_http_date(SystemTime::now());
    let subject = header_text(&flatten(subject, 2 * MAX_FIELD_CHARS));
    let mut text = format!(
        "From: Mail Fabric <postmaster@{domain}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <notify.{}.{}@{hostname}>\r\n\
         Auto-Submitted: auto-generated\r\n",
        safe_tag(tag),
        uuid::Uuid::new_v4().simple()
    );
    if let Some(id) = fabric_id {
        text.push_str(&format!("X-Fabric-Message-Id: {}\r\n", safe_tag(id)));
    }
    text.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n");
    let body: String = body
        .lines()
        .map(|l| format!("{}\r\n", flatten(l, 900)))
        .collect();
    if body.is_ascii() {
        text.push_str("Content-Transfer-Encoding: 7bit\r\n\r\n");
        text.push_str(&body);
    } else {
        text.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(body.as_bytes());
        for chunk in b64.as_bytes().chunks(76) {
            text.push_str(&String::from_utf8_lossy(chunk));
            text.push_str("\r\n");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_from_and_subject_and_flattens_them() {
        let s = Summary::read(
            b"From: Bob <bob@remote.example>\r\nSubject: hello\r\n there\r\n\r\n",
            Some("env@remote.example"),
        );
        assert_eq!(s.from, "bob@remote.example");
        assert_eq!(s.subject, "hello there");
        let none = Summary::read(b"X-Other: 1\r\n\r\n", Some("env@remote.example"));
        assert_eq!(none.from, "env@remote.example");
        assert_eq!(none.subject, "(no subject)");
    }

    #[test]
    fn sms_keeps_the_id_when_the_subject_is_long() {
        let id = "0192f0c0aa007000800000000000abcd";
        let s = Summary {
            from: "bob@remote.example".into(),
            subject: "x".repeat(500),
        };
        let text = s.sms_text(id);
        assert!(text.chars().count() <= MAX_SMS_CHARS, "{text}");
        assert!(text.contains(id));
    }

    #[test]
    fn notice_cannot_be_given_extra_headers() {
        let s = Summary {
            from: flatten("a@b.example\r\nBcc: victim@x.example", 200),
            subject: flatten("hi\r\nBcc: victim@x.example", 200),
        };
        let n = s.notice("id1", "ann@acme.example", "ann@home.example", "mx-a.mini");
        assert!(!n.contains("\r\nBcc:"), "{n}");
        assert!(n.contains("To: <ann@home.example>\r\n"));
        let u = Summary {
            from: "b@x.example".into(),
            subject: "smörgåsbord".into(),
        }
        .notice("id1", "ann@acme.example", "ann@home.example", "h");
        assert!(u.is_ascii(), "non-ASCII is encoded: {u}");
    }

    #[test]
    fn service_notices_are_flattened_too() {
        let n = notice_mail(
            "continuity-start west",
            "ann@acme.example",
            "ann@home.example",
            "h",
            "moved\r\nBcc: victim@x.example",
            "line one\r\n\r\nline two\rBcc: x@y.example",
            None,
        );
        assert!(!n.contains("\r\nBcc:"), "{n}");
        assert!(
            n.contains("Message-ID: <notify.continuity-startwest."),
            "{n}"
        );
        assert!(!n.contains("X-Fabric-Message-Id"), "{n}");
        assert!(
            n.contains("\r\n\r\nline one\r\n\r\nline two Bcc: x@y.example\r\n"),
            "{n}"
        );
        let long = sms(&"x\n".repeat(400));
        assert!(long.chars().count() <= MAX_SMS_CHARS && !long.contains('\n'));
    }
}
