//! ENVELOPE, BODY and BODYSTRUCTURE computed once per message for the whole node, not once per
//! session: a mail client's first sync of a folder (`UID FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE
//! BODYSTRUCTURE)`) then reads neither the bodies from the store nor parses them again — what
//! Dovecot's index cache does.
//!
//! The key is the message's identity as IMAP defines it: user, folder, UIDVALIDITY and UID (a UID is
//! never given to another message while the UIDVALIDITY stands, RFC 3501 2.3.1.1), plus the size and
//! the internal date as a second guard. A message's bytes never change, so an entry never goes stale;
//! entries of expunged messages are simply never asked for again. Past the byte budget the cache is
//! emptied and fills again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::mime::Parsed;

/// Rough bytes the cache may hold.
const BUDGET: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub user: String,
    pub folder: String,
    pub uidvalidity: u32,
    pub uid: u32,
    pub size: u64,
    pub internal_date_ms: i64,
}

/// Shared by every session of a node; a clone is the same cache.
#[derive(Default, Clone)]
pub struct StructureCache {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for StructureCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.inner.lock().map(|i| i.entries.len()).unwrap_or(0);
        f.debug_struct("StructureCache")
            .field("entries", &entries)
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Arc<Parsed>>,
    bytes: usize,
}

fn weight(key: &Key, p: &Parsed) -> usize {
    // The rendered forms dominate; the entity tree is about as large as the BODY form.
    key.user.len()
        + key.folder.len()
        + p.envelope.len()
        + 2 * p.body.len()
        + p.bodystructure.len()
        + 128
}

impl StructureCache {
    pub(crate) fn get(&self, key: &Key) -> Option<Arc<Parsed>> {
        let hit = self.inner.lock().ok()?.entries.get(key).cloned();
        metrics::counter!(
            "fabric_imap_structure_cache_total",
            "result" => if hit.is_some() { "hit" } else { "miss" }
        )
        .increment(1);
        hit
    }

    pub(crate) fn put(&self, key: Key, parsed: Arc<Parsed>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let w = weight(&key, &parsed);
        if inner.bytes + w > BUDGET {
            inner.entries.clear();
            inner.bytes = 0;
        }
        if inner.entries.insert(key, parsed).is_none() {
            inner.bytes += w;
        }
    }
}
