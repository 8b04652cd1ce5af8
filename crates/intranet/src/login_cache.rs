//! Logins verified recently, so a client that logs in again (every POP3 poll, every IMAP connection
//! a mail client opens) does not pay for an argon2 verification (tens of milliseconds of CPU) each
//! time — what Dovecot's auth cache does.
//!
//! An entry keeps a SHA-256 of the password under a key drawn at start (never the password) and the
//! directory's argon2 hash it was verified against. Every login still reads the user from the
//! directory: when the stored hash changed (`fabric user passwd`) or the user is gone, the entry
//! does not match and argon2 decides again. Wrong passwords are never cached, so guessing still
//! costs a full verification and the slow-down of the protocol.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a verified login is trusted without argon2.
pub const TTL: Duration = Duration::from_secs(600);
/// Most entries held; beyond it the expired ones go, then everything.
const MAX_ENTRIES: usize = 10_000;

struct Entry {
    stored_hash: String,
    digest: [u8; 32],
    at: Instant,
}

pub struct LoginCache {
    key: [u8; 32],
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Default for LoginCache {
    fn default() -> Self {
        LoginCache::new(TTL)
    }
}

impl LoginCache {
    pub fn new(ttl: Duration) -> LoginCache {
        LoginCache {
            key: rand::random(),
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn digest(&self, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Whether `password` was verified against `stored_hash` for `address` within the TTL.
    pub fn verified(&self, address: &str, stored_hash: &str, password: &str) -> bool {
        let digest = self.digest(password);
        let Ok(entries) = self.entries.lock() else {
            return false;
        };
        entries.get(address).is_some_and(|e| {
            e.at.elapsed() < self.ttl
                && e.stored_hash == stored_hash
                // Compare without an early exit.
                && e.digest.iter().zip(digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        })
    }

    /// Records a login argon2 has just accepted.
    pub fn remember(&self, address: &str, stored_hash: &str, password: &str) {
        let digest = self.digest(password);
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, e| e.at.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            address.to_string(),
            Entry {
                stored_hash: stored_hash.to_string(),
                digest,
                at: Instant::now(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_password_against_the_same_hash_within_the_ttl() {
        let c = LoginCache::new(Duration::from_secs(60));
        assert!(!c.verified("ann@acme.example", "$h1", "pw"));
        c.remember("ann@acme.example", "$h1", "pw");
        assert!(c.verified("ann@acme.example", "$h1", "pw"));
        assert!(
            !c.verified("ann@acme.example", "$h1", "pw2"),
            "another password"
        );
        assert!(
            !c.verified("ann@acme.example", "$h2", "pw"),
            "the password was changed"
        );
        assert!(!c.verified("bob@acme.example", "$h1", "pw"), "another user");
    }

    #[test]
    fn entries_expire() {
        let c = LoginCache::new(Duration::from_millis(0));
        c.remember("ann@acme.example", "$h1", "pw");
        assert!(!c.verified("ann@acme.example", "$h1", "pw"));
    }
}
