//! Delivery status notifications (RFC 3464 inside a multipart/report, RFC 6522): what the sender
//! gets back when a remote MX refused a recipient for good or the message outlived its queue lifetime.

use std::time::SystemTime;

/// A bounce for `failed` (recipient, why) of the message `id` sent by `sender`, with the original's
/// headers attached (text/rfc822-headers).
pub fn build(
    reporting_mta: &str,
    id: &str,
    sender: &str,
    failed: &[(String, String)],
    original: &[u8],
) -> Vec<u8> {
    let date = httpdate::fmt_http_date(SystemTime::now());
    let boundary = format!("=_fabric_dsn_{id}");
    let headers_end = original
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(original.len());
    let original_headers = String::from_utf8_lossy(&original[..headers_end]);
    let mut human = String::new();
    let mut status = String::new();
    for (rcpt, why) in failed {
        let why: String = why.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        human.push_str(&format!("  <{rcpt}>: {why}\r\n"));
        let (code, diag) = diagnostic(&why);
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822;{rcpt}\r\nAction: failed\r\nStatus: {code}\r\nDiagnostic-Code: smtp;{diag}\r\n"
        ));
    }
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\n\
         To: <{sender}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.bounce@{reporting_mta}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         Your message {id} could not be delivered to these recipients:\r\n\
         \r\n\
         {human}\r\n\
         --{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns;{reporting_mta}\r\n\
         X-Fabric-Message-Id: {id}\r\n\
         {status}\r\n\
         --{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n\
         {original_headers}\r\n\
         --{boundary}--\r\n"
    )
    .into_bytes()
}

/// The status code (`5.x.y`) and the remote's words from an outcome's text (`RCPT TO: 550 5.1.1 ...`).
fn diagnostic(why: &str) -> (String, String) {
    let reply = why.split_once(": ").map(|(_, r)| r).unwrap_or(why);
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or("");
    let enhanced = words
        .next()
        .filter(|w| w.split('.').count() == 3 && w.starts_with(['4', '5']))
        .map(str::to_string);
    let status = match (enhanced, code.chars().next()) {
        (Some(e), _) => e.replacen('4', "5", 1),
        (None, _) => "5.0.0".to_string(),
    };
    (status, reply.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounce_is_a_delivery_status_report_with_the_recipients_status() {
        let b = build(
            "mx.example",
            "abc",
            "ann@acme.example",
            &[(
                "x@remote.example".into(),
                "RCPT TO: 550 5.1.1 no such user".into(),
            )],
            b"Subject: hi\r\nFrom: ann@acme.example\r\n\r\nbody\r\n",
        );
        let text = String::from_utf8(b).unwrap_or_default();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status"));
        assert!(text.contains("Content-Type: message/delivery-status"));
        assert!(text.contains(
            "Final-Recipient: rfc822;x@remote.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(text.contains("Subject: hi\r\n"));
        assert!(!text.contains("\r\nbody\r\n"));
    }
}
