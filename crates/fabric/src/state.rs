//! `fabric.json`: which pid runs which node, under the data directory.
//!
//! Several `fabric` commands may run at once (a foreground `fabric up` and an operator's
//! `fabric kill` in another terminal), so every change is a read-modify-write under an exclusive
//! `flock` of `fabric.lock`, and the file is replaced atomically (write to a temporary, rename).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::launch::FabricStatePaths;

/// One node's process, as last started by `fabric`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    pub pid: u32,
    /// Seconds since the Unix epoch when the process was started.
    pub started_at: u64,
}

/// The whole state file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FabricState {
    /// Absolute path of the topology the fabric was started from.
    pub topology: PathBuf,
    /// Pid of a foreground `fabric up` supervising the nodes, if one runs.
    pub supervisor: Option<u32>,
    pub nodes: BTreeMap<String, NodeRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a fabric state file: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no fabric state in {0} (start one with `fabric up`, or pass --data-dir)")]
    NotStarted(PathBuf),
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl FabricState {
    /// Reads the state file; `NotStarted` if there is none.
    pub fn read(data_dir: &Path) -> Result<FabricState, StateError> {
        let path = FabricStatePaths::state(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotStarted(data_dir.to_path_buf()));
            }
            Err(source) => return Err(StateError::Io { path, source }),
        };
        serde_json::from_str(&text).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Applies `change` to the state under the lock and writes it back; returns what `change` returned.
    /// A missing file starts from `FabricState::default()`.
    pub fn update<T>(
        data_dir: &Path,
        change: impl FnOnce(&mut FabricState) -> T,
    ) -> Result<T, StateError> {
        let _lock = lock(data_dir)?;
        let mut state = match FabricState::read(data_dir) {
            Ok(s) => s,
            Err(StateError::NotStarted(_)) => FabricState::default(),
            Err(e) => return Err(e),
        };
        let out = change(&mut state);
        state.write(data_dir)?;
        Ok(out)
    }

    fn write(&self, data_dir: &Path) -> Result<(), StateError> {
        let path = FabricStatePaths::state(data_dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, text + "\n").map_err(|source| StateError::Io {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| StateError::Io { path, source })
    }
}

fn lock(data_dir: &Path) -> Result<Flock<File>, StateError> {
    let path = FabricStatePaths::lock(data_dir);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| StateError::Io {
        path,
        source: errno.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_survive_a_round_trip_and_missing_state_is_not_started() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(matches!(
            FabricState::read(dir.path()),
            Err(StateError::NotStarted(_))
        ));
        FabricState::update(dir.path(), |s| {
            s.nodes.insert(
                "store-a".into(),
                NodeRecord {
                    pid: 42,
                    started_at: 7,
                },
            );
        })?;
        let back = FabricState::read(dir.path())?;
        assert_eq!(back.nodes["store-a"].pid, 42);
        std::fs::write(dir.path().join("fabric.json"), "{not json")?;
        assert!(matches!(
            FabricState::read(dir.path()),
            Err(StateError::Corrupt { .. })
        ));
        Ok(())
    }
}
