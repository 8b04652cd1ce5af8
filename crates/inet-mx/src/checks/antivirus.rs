//! The inbound antivirus check: the EICAR test signature, in the raw message and in every decoded
//! part (a base64 or quoted-printable attachment hides it from a raw scan).
//!
//! As a layer: at the end of DATA it scans the message and marks it for quarantine; it refuses
//! nothing (the mail is accepted and filed in the recipients' Quarantine, never in their INBOX).
//! Once the store has it, the find is counted (`fabric_inet_mx_infected_total`) and logged.

use std::task::{Context, Poll};

use mail_parser::MessageParser;
use tower::{Layer, Service, ServiceExt};

use super::{CheckFuture, Inbound, Next, Step};

#[derive(Debug, Clone, Copy)]
pub struct AntivirusLayer;

impl<S> Layer<S> for AntivirusLayer {
    type Service = Antivirus<S>;
    fn layer(&self, inner: S) -> Antivirus<S> {
        Antivirus { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Antivirus<S> {
    inner: S,
}

impl<S: Next> Service<Inbound> for Antivirus<S> {
    type Response = smtp::Reply;
    type Error = std::convert::Infallible;
    type Future = CheckFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Inbound) -> CheckFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            let Step::Data(message) = &mut req.step else {
                return inner.oneshot(req).await;
            };
            let found = scan(&message.body);
            message.quarantine = found;
            let id = message.id.clone();
            let reply = inner.oneshot(req).await?;
            if let Some(virus) = found
                && reply.is_positive()
            {
                metrics::counter!("fabric_inet_mx_infected_total").increment(1);
                tracing::warn!(msg_id = %id, virus, "infected message: it goes to the recipients' Quarantine, never to their INBOX");
            }
            Ok(reply)
        })
    }
}

/// The EICAR anti-malware test file's signature (a harmless, standard test string).
const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// Whether a part of the message may be encoded (base64, quoted-printable: a
/// `Content-Transfer-Encoding` header, in any case, anywhere). Only such a part can hide a signature
/// from the raw search, so only then is the message parsed and its parts decoded.
fn may_be_encoded(message: &[u8]) -> bool {
    const HEADER: &[u8] = b"transfer-encoding";
    memchr::memchr2_iter(b't', b'T', message).any(|at| {
        message
            .get(at..at + HEADER.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(HEADER))
    })
}

/// The name of what was found, if anything.
pub fn scan(message: &[u8]) -> Option<&'static str> {
    if contains(message, EICAR) {
        return Some("EICAR-Test-File");
    }
    if !may_be_encoded(message) {
        return None;
    }
    let parsed = MessageParser::default().parse(message)?;
    parsed
        .parts
        .iter()
        .any(|part| contains(part.contents(), EICAR))
        .then_some("EICAR-Test-File")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_eicar_raw_and_inside_a_base64_attachment() {
        let mut raw = b"Subject: x\r\n\r\n".to_vec();
        raw.extend_from_slice(EICAR);
        assert_eq!(scan(&raw), Some("EICAR-Test-File"));
        // base64 of the signature, as a MIME attachment.
        let b64 = "WDVPIVAlQEFQWzRcUFpYNTQoUF4pN0NDKTd9JEVJQ0FSLVNUQU5EQVJELUFOVElWSVJVUy1URVNULUZJTEUhJEgrSCo=";
        let mime = format!(
            "Subject: y\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=eicar.com\r\n\r\n{b64}\r\n--b--\r\n"
        );
        assert!(!contains(mime.as_bytes(), EICAR));
        assert_eq!(scan(mime.as_bytes()), Some("EICAR-Test-File"));
        assert_eq!(scan(b"Subject: clean\r\n\r\nnothing here\r\n"), None);
    }

    #[test]
    fn an_encoded_part_is_decoded_whatever_the_case_of_its_header() {
        // Quoted-printable with a soft line break inside the signature (the raw search misses it),
        // under a header written in lowercase.
        let (head, tail) = EICAR.split_at(30);
        let qp = format!(
            "Subject: q\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\ncontent-transfer-encoding: QUOTED-PRINTABLE\r\nContent-Type: text/plain\r\n\r\n{}=\r\n{}\r\n--b--\r\n",
            String::from_utf8_lossy(head),
            String::from_utf8_lossy(tail)
        );
        assert!(!contains(qp.as_bytes(), EICAR));
        assert!(may_be_encoded(qp.as_bytes()));
        assert_eq!(scan(qp.as_bytes()), Some("EICAR-Test-File"));
        let plain = b"Subject: t\r\nContent-Type: text/plain\r\n\r\nTransfer? encoding? no.\r\n";
        assert!(!may_be_encoded(plain));
        assert_eq!(scan(plain), None);
    }
}
