//! IMAP flags as a message row keeps them: sorted, de-duplicated (case-insensitively), separated by
//! spaces.

pub fn split_flags(flags: &str) -> Vec<String> {
    flags.split_whitespace().map(str::to_string).collect()
}

/// Flags are stored sorted and de-duplicated, separated by spaces.
pub fn join_flags(flags: impl Iterator<Item = String>) -> String {
    let mut v: Vec<String> = flags.filter(|f| !f.is_empty()).collect();
    v.sort_by_key(|f| f.to_ascii_lowercase());
    v.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    v.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_sorted_and_unique() {
        let joined = join_flags(
            ["\\Seen", "\\Flagged", "\\seen", ""]
                .into_iter()
                .map(String::from),
        );
        assert_eq!(joined, "\\Flagged \\Seen");
        assert_eq!(split_flags(&joined), vec!["\\Flagged", "\\Seen"]);
    }
}
