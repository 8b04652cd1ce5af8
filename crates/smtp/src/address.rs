//! Mailbox paths of MAIL FROM and RCPT TO (RFC 5321 4.1.2), with the limits of 4.5.3.1 and the forms
//! an open relay would honour refused.

/// A parsed `user@domain`, lowercased in the domain; the local part is kept as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub local: String,
    pub domain: String,
}

impl Address {
    pub fn as_string(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// Why a path was refused; each maps to one SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("syntax error in the path")]
    Syntax,
    #[error("path longer than 256 octets")]
    PathTooLong,
    #[error("local part longer than 64 octets")]
    LocalTooLong,
    #[error("domain longer than 255 octets")]
    DomainTooLong,
    /// Source routes, `%` and `!` hacks, quoted local parts hiding another domain.
    #[error("relay form in the address")]
    RelayForm,
}

pub const MAX_PATH: usize = 256;
pub const MAX_LOCAL: usize = 64;
pub const MAX_DOMAIN: usize = 255;

fn atext(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&c)
}

fn valid_domain(d: &str) -> bool {
    if let Some(lit) = d.strip_prefix('[') {
        return lit.ends_with(']') && lit.len() > 1;
    }
    !d.is_empty()
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Parses `<local@domain>` (the angle brackets included); `<>` gives `None` when `allow_null`.
/// Returns the path and the rest of the argument (ESMTP parameters).
pub fn parse_path(arg: &str, allow_null: bool) -> Result<(Option<Address>, &str), PathError> {
    let arg = arg.trim_start();
    if !arg.starts_with('<') {
        return Err(PathError::Syntax);
    }
    let close = arg.find('>').ok_or(PathError::Syntax)?;
    let inner = &arg[1..close];
    let rest = &arg[close + 1..];
    // The path with its brackets is what RFC 5321 4.5.3.1.3 limits.
    if close + 1 > MAX_PATH {
        return Err(PathError::PathTooLong);
    }
    if inner.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(PathError::Syntax);
    }
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(PathError::Syntax);
    }
    if inner.is_empty() {
        return if allow_null {
            Ok((None, rest))
        } else {
            Err(PathError::Syntax)
        };
    }
    if inner.starts_with('@') {
        // A source route (@hop,@hop:user@dom): obsolete, and a relay form.
        return Err(PathError::RelayForm);
    }
    let at = inner.rfind('@').ok_or(PathError::Syntax)?;
    let (local, domain) = (&inner[..at], &inner[at + 1..]);
    if local.is_empty() {
        return Err(PathError::Syntax);
    }
    if local.len() > MAX_LOCAL {
        return Err(PathError::LocalTooLong);
    }
    if domain.len() > MAX_DOMAIN {
        return Err(PathError::DomainTooLong);
    }
    if !valid_domain(domain) {
        return Err(PathError::Syntax);
    }
    if local.starts_with('"') {
        // A quoted local part: legal, but one that hides an address is how relays are abused.
        if !(local.len() >= 2 && local.ends_with('"')) {
            return Err(PathError::Syntax);
        }
        let q = &local[1..local.len() - 1];
        if q.contains('@') || q.contains('%') || q.contains('!') {
            return Err(PathError::RelayForm);
        }
        if q.bytes().any(|c| !(32..127).contains(&c)) {
            return Err(PathError::Syntax);
        }
    } else {
        if local.contains('%') || local.contains('!') {
            return Err(PathError::RelayForm);
        }
        if !local.bytes().all(atext)
            || local.starts_with('.')
            || local.ends_with('.')
            || local.contains("..")
        {
            return Err(PathError::Syntax);
        }
    }
    Ok((
        Some(Address {
            local: local.to_string(),
            domain: domain.to_ascii_lowercase(),
        }),
        rest,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Result<Option<Address>, PathError> {
        parse_path(s, true).map(|(a, _)| a)
    }

    #[test]
    fn ordinary_and_null_paths() {
        let a = addr("<Ann@Acme.Example>").ok().flatten();
        assert_eq!(
            a,
            Some(Address {
                local: "Ann".into(),
                domain: "acme.example".into()
            })
        );
        assert_eq!(addr("<>"), Ok(None));
        assert_eq!(parse_path("<>", false), Err(PathError::Syntax));
        assert_eq!(
            parse_path("<a@b.example> SIZE=10", true).map(|(_, r)| r),
            Ok(" SIZE=10")
        );
    }

    #[test]
    fn limits_are_exact() {
        let local64 = "l".repeat(64);
        assert!(addr(&format!("<{local64}@d.example>")).is_ok());
        assert_eq!(
            addr(&format!("<{local64}x@d.example>")),
            Err(PathError::LocalTooLong)
        );
        // A path of exactly 256 octets with its brackets: 1 + 64 + 1 + 189 + 1.
        let domain189 = format!("{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(61));
        assert_eq!(domain189.len(), 189);
        assert!(addr(&format!("<{local64}@{domain189}>")).is_ok());
        assert_eq!(
            addr(&format!("<{local64}@{domain189}x>")),
            Err(PathError::PathTooLong)
        );
    }

    #[test]
    fn relay_forms_are_refused() {
        for form in [
            "<a!b@acme.example>",
            "<a%b@acme.example>",
            "<@hop1,@hop2:user@acme.example>",
            "<\"user@other.example\"@acme.example>",
        ] {
            assert_eq!(addr(form), Err(PathError::RelayForm), "{form}");
        }
    }

    #[test]
    fn broken_paths_are_syntax_errors() {
        for bad in [
            "a@b.example",
            "<a@b.example",
            "<a@>",
            "<@>",
            "<a@-b.example>",
            "<a..b@c.example>",
            "<a\r@b.example>",
            "<a@b.example>x",
        ] {
            assert!(addr(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
