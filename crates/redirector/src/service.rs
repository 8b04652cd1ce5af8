//! What the redirector knows of each mail protocol: the greeting a healthy server opens with, how a
//! check says goodbye, and the line a client gets when no server can take it.

/// A service a redirector balances (the topology's port names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Smtp,
    Submission,
    Pop3,
    Imap,
}

impl Service {
    pub fn parse(name: &str) -> Option<Service> {
        match name {
            "smtp" => Some(Service::Smtp),
            "submission" => Some(Service::Submission),
            "pop3" => Some(Service::Pop3),
            "imap" => Some(Service::Imap),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Service::Smtp => "smtp",
            Service::Submission => "submission",
            Service::Pop3 => "pop3",
            Service::Imap => "imap",
        }
    }

    /// How a healthy server's greeting starts (HAProxy's `smtpchk` looks for `220` the same way).
    pub fn greeting(self) -> &'static [u8] {
        match self {
            Service::Smtp | Service::Submission => b"220",
            Service::Pop3 => b"+OK",
            Service::Imap => b"* OK",
        }
    }

    /// What a health check sends after a good greeting, before it closes.
    pub fn goodbye(self) -> &'static [u8] {
        match self {
            Service::Smtp | Service::Submission | Service::Pop3 => b"QUIT\r\n",
            Service::Imap => b"c LOGOUT\r\n",
        }
    }

    /// The client's answer when every server (local and the other site's) failed.
    pub fn unavailable(self) -> &'static [u8] {
        match self {
            Service::Smtp | Service::Submission => b"421 4.3.0 no mail server available\r\n",
            Service::Pop3 => b"-ERR [SYS/TEMP] no mail server available\r\n",
            Service::Imap => b"* BYE [UNAVAILABLE] no mail server available\r\n",
        }
    }

    /// The client's answer when the redirector itself is at its session cap.
    pub fn busy(self) -> &'static [u8] {
        match self {
            Service::Smtp | Service::Submission => {
                b"421 4.7.0 too many sessions; try again later\r\n"
            }
            Service::Pop3 => b"-ERR [SYS/TEMP] too many sessions\r\n",
            Service::Imap => b"* BYE [UNAVAILABLE] too many sessions\r\n",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_lines_end_in_crlf() {
        for s in [
            Service::Smtp,
            Service::Submission,
            Service::Pop3,
            Service::Imap,
        ] {
            assert_eq!(Service::parse(s.as_str()), Some(s));
            assert!(s.unavailable().ends_with(b"\r\n"));
            assert!(s.busy().ends_with(b"\r\n"));
            assert!(s.goodbye().ends_with(b"\r\n"));
        }
        assert_eq!(Service::parse("dns"), None);
        assert!(Service::Smtp.unavailable().starts_with(b"421 "));
    }
}
