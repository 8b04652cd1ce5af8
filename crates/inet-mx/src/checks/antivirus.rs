//! The inbound antivirus check: the EICAR test signature, in the raw message and in every decoded
//! part (a base64 or quoted-printable attachment hides it from a raw scan).

use mail_parser::MessageParser;

/// The EICAR anti-malware test file's signature (a harmless, standard test string).
const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The name of what was found, if anything.
pub fn scan(message: &[u8]) -> Option<&'static str> {
    if contains(message, EICAR) {
        return Some("EICAR-Test-File");
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
}
