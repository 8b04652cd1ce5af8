//! Delivery status notifications (RFC 3464 inside a multipart/report, RFC 6522): what the sender
//! gets back when a remote MX refused a recipient for good or the message outlived its queue lifetime
//! (`build`, Action: failed), and the warning that a message is still waiting (`build_delay`,
//! Action: delayed).

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
    report(reporting_mta, id, sender, failed, original, Kind::Failed)
}

/// A delay notice (RFC 3464 `Action: delayed`, status 4.x.y): the message `id` still waits for
/// `waiting` (recipient, why) and will be tried until `retry_until` (an RFC 5322 date).
pub fn build_delay(
    reporting_mta: &str,
    id: &str,
    sender: &str,
    waiting: &[(String, String)],
    original: &[u8],
    retry_until: SystemTime,
) -> Vec<u8> {
    report(
        reporting_mta,
        id,
        sender,
        waiting,
        original,
        Kind::Delayed(retry_until),
    )
}

enum Kind {
    Failed,
    Delayed(SystemTime),
}

fn report(
    reporting_mta: &str,
    id: &str,
    sender: &str,
    failed: &[(String, String)],
    original: &[u8],
    kind: Kind,
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
        let (action, code, until) = match kind {
            Kind::Failed => ("failed", code, String::new()),
            Kind::Delayed(t) => (
                "delayed",
                code.replacen('5', "4", 1),
                format!("Will-Retry-Until: {}\r\n", httpdate::fmt_http_date(t)),
            ),
        };
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822;{rcpt}\r\nAction: {action}\r\nStatus: {code}\r\nDiagnostic-Code: smtp;{diag}\r\n{until}"
        ));
    }
    let (subject, intro, suffix) = match kind {
        Kind::Failed => (
            "Undelivered Mail Returned to Sender",
            "could not be delivered to these recipients",
            "bounce",
        ),
        Kind::Delayed(_) => (
            "Delayed Mail (still being retried)",
            "has not been delivered yet; it is kept safe and tried again, no need to resend it. Still waiting",
            "delay",
        ),
    };
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\n\
         To: <{sender}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.{suffix}@{reporting_mta}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         Your message {id} {intro}:\r\n\
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

    #[test]
    fn a_delay_notice_says_delayed_with_a_4xx_status_and_the_retry_limit() {
        let b = build_delay(
            "relay.example",
            "abc",
            "x@remote.example",
            &[(
                "ann@acme.example".into(),
                "primary: 421 4.3.0 no mail server available".into(),
            )],
            b"Subject: hi\r\n\r\nbody\r\n",
            SystemTime::UNIX_EPOCH,
        );
        let text = String::from_utf8(b).unwrap_or_default();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status"));
        assert!(text.contains(
            "Final-Recipient: rfc822;ann@acme.example\r\nAction: delayed\r\nStatus: 4.3.0\r\n"
        ));
        assert!(text.contains("Will-Retry-Until: Thu, 01 Jan 1970 00:00:00 GMT\r\n"));
        assert!(text.contains("Subject: Delayed Mail"));
    }
}
