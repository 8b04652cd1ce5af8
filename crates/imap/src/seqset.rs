//! Sequence sets (RFC 3501 9, `sequence-set`) resolved against the selected folder: message sequence
//! numbers or UIDs, `*` the last one, ranges in either order.

use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

use crate::MessageMeta;

/// Indices (0-based, ascending, unique) of the messages the set names. With message numbers, a number
/// past the last message is an error (`None`); with UIDs, UIDs not present are skipped and `n:*`
/// always includes the last message (RFC 3501 6.4.8).
pub(crate) fn resolve(set: &SequenceSet, msgs: &[MessageMeta], uid: bool) -> Option<Vec<usize>> {
    let mut out: Vec<usize> = Vec::new();
    for seq in set.0.as_ref() {
        if uid {
            let last = msgs.last().map(|m| m.uid).unwrap_or(0);
            let value = |s: &SeqOrUid| match s {
                SeqOrUid::Value(v) => v.get(),
                SeqOrUid::Asterisk => last,
            };
            let (lo, hi) = match seq {
                Sequence::Single(s) => (value(s), value(s)),
                Sequence::Range(a, b) => {
                    let (a, b) = (value(a), value(b));
                    (a.min(b), a.max(b))
                }
            };
            let start = msgs.partition_point(|m| m.uid < lo);
            let end = msgs.partition_point(|m| m.uid <= hi);
            out.extend(start..end);
        } else {
            let last = msgs.len() as u32;
            let value = |s: &SeqOrUid| match s {
                SeqOrUid::Value(v) => v.get(),
                SeqOrUid::Asterisk => last,
            };
            let (lo, hi) = match seq {
                Sequence::Single(s) => (value(s), value(s)),
                Sequence::Range(a, b) => {
                    let (a, b) = (value(a), value(b));
                    (a.min(b), a.max(b))
                }
            };
            if lo == 0 || hi > last {
                return None;
            }
            out.extend((lo as usize - 1)..(hi as usize));
        }
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// Like [`resolve`], but message numbers past the end are ignored (SEARCH never fails on them).
pub(crate) fn resolve_lenient(set: &SequenceSet, msgs: &[MessageMeta], uid: bool) -> Vec<usize> {
    if uid {
        return resolve(set, msgs, true).unwrap_or_default();
    }
    let last = msgs.len() as u32;
    let mut out = Vec::new();
    for seq in set.0.as_ref() {
        let value = |s: &SeqOrUid| match s {
            SeqOrUid::Value(v) => v.get(),
            SeqOrUid::Asterisk => last,
        };
        let (lo, hi) = match seq {
            Sequence::Single(s) => (value(s), value(s)),
            Sequence::Range(a, b) => (value(a).min(value(b)), value(a).max(value(b))),
        };
        let hi = hi.min(last);
        if lo >= 1 && lo <= hi {
            out.extend((lo as usize - 1)..(hi as usize));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::imap_types::sequence::SequenceSet;

    fn msgs(uids: &[u32]) -> Vec<MessageMeta> {
        uids.iter()
            .map(|u| MessageMeta {
                uid: *u,
                flags: vec![],
                size: 1,
                internal_date_ms: 0,
            })
            .collect()
    }

    fn set(s: &str) -> SequenceSet {
        SequenceSet::try_from(s).expect("valid set")
    }

    #[test]
    fn numbers_and_uids() {
        let m = msgs(&[3, 5, 9]);
        assert_eq!(resolve(&set("1:*"), &m, false), Some(vec![0, 1, 2]));
        assert_eq!(resolve(&set("2"), &m, false), Some(vec![1]));
        assert_eq!(resolve(&set("4"), &m, false), None);
        assert_eq!(resolve(&set("4:9"), &m, true), Some(vec![1, 2]));
        assert_eq!(resolve(&set("10:*"), &m, true), Some(vec![2]));
        assert_eq!(resolve(&set("1,4"), &m, true), Some(vec![]));
    }
}
