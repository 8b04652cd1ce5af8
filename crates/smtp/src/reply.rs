//! SMTP replies: a code, an enhanced status code (RFC 3463) and text.

use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `x.y.z`, sent when ENHANCEDSTATUSCODES applies (every reply after the greeting).
    pub enhanced: Option<&'static str>,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    pub fn plain(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines: vec![text.into()],
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// The wire form: `250-first` ... `250 last`, each line ending in CRLF.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let n = self.lines.len().max(1);
        for i in 0..n {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            // Never let a CR or LF from anywhere reach the wire inside a reply line.
            let text: String = text.chars().filter(|c| *c != '\r' && *c != '\n').collect();
            let sep = if i + 1 == n { ' ' } else { '-' };
            let _ = match self.enhanced {
                Some(e) => write!(out, "{}{sep}{e} {text}\r\n", self.code),
                _ => write!(out, "{}{sep}{text}\r\n", self.code),
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_replies_use_dashes_and_end_with_a_space() {
        let r = Reply {
            code: 250,
            enhanced: None,
            lines: vec!["mx.example".into(), "PIPELINING".into(), "SIZE 100".into()],
        };
        assert_eq!(
            r.encode(),
            "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n"
        );
        assert_eq!(
            Reply::new(550, "5.1.1", "no such user\r\ninjected").encode(),
            "550 5.1.1 no such userinjected\r\n"
        );
    }
}
