//! Durable storage of what the outside world received: one file per message (`ID.msg`, the raw
//! bytes) and a JSON sidecar (`ID.json`, the envelope), each written to `tmp/`, fsynced, renamed
//! into place and the directory fsynced, the message before its sidecar. A sidecar therefore exists
//! only for a message that is whole on disk, and listing reads sidecars only.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid sidecar: {message}")]
    Sidecar { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One directory of received messages.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    tmp: PathBuf,
}

/// Whether `id` has the shape of an id this spool gives (32 lowercase hex digits: a UUIDv7).
pub fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl Spool {
    /// Opens (creating) the spool under `dir`; leftovers of an interrupted write are removed.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        let tmp = dir.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        Ok(Spool {
            dir: dir.to_path_buf(),
            tmp,
        })
    }

    /// Stores `body` with `meta` (an object; `id`, `time` and `size` are added) and returns the
    /// sidecar. Everything is on disk when this returns.
    pub fn put(&self, body: &[u8], meta: Map<String, Value>) -> Result<Value, SpoolError> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let mut sidecar = Map::new();
        sidecar.insert("id".into(), Value::from(id.clone()));
        sidecar.insert(
            "time".into(),
            Value::from(humantime::format_rfc3339_millis(SystemTime::now()).to_string()),
        );
        sidecar.insert("size".into(), Value::from(body.len()));
        sidecar.extend(meta);
        let sidecar = Value::Object(sidecar);
        let text = serde_json::to_vec(&sidecar).map_err(|e| SpoolError::Sidecar {
            path: self.dir.join(format!("{id}.json")),
            message: e.to_string(),
        })?;
        for (ext, bytes) in [("msg", body), ("json", &text[..])] {
            let tmp = self.tmp.join(format!("{id}.{ext}"));
            let path = self.dir.join(format!("{id}.{ext}"));
            write_synced(&tmp, bytes)?;
            fs::rename(&tmp, &path).map_err(io(&path))?;
            sync_dir(&self.dir)?;
        }
        Ok(sidecar)
    }

    /// Every sidecar, oldest first (ids are UUIDv7, so they sort by time).
    pub fn list(&self) -> Result<Vec<Value>, SpoolError> {
        let mut names: Vec<String> = fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.strip_suffix(".json").is_some_and(valid_id))
            .collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let path = self.dir.join(&name);
            let text = fs::read(&path).map_err(io(&path))?;
            let v = serde_json::from_slice(&text).map_err(|e| SpoolError::Sidecar {
                path: path.clone(),
                message: e.to_string(),
            })?;
            out.push(v);
        }
        Ok(out)
    }

    /// The raw bytes of message `id` (`None`: no such message).
    pub fn get(&self, id: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        if !valid_id(id) || !self.dir.join(format!("{id}.json")).exists() {
            return Ok(None);
        }
        let path = self.dir.join(format!("{id}.msg"));
        fs::read(&path).map(Some).map_err(io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_list_get_and_reopen() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let spool = Spool::open(dir.path())?;
        let mut meta = Map::new();
        meta.insert("to".into(), Value::from("+15550100"));
        let a = spool.put(b"first", meta.clone())?;
        let b = spool.put(b"second!", meta)?;
        let id_a = a["id"].as_str().unwrap_or_default().to_string();
        assert!(valid_id(&id_a));
        assert_eq!(a["size"], 5);
        // A half-written leftover is not listed, and is cleaned at the next open.
        std::fs::write(dir.path().join("tmp").join("junk.json"), b"{")?;
        let spool = Spool::open(dir.path())?;
        let list = spool.list()?;
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["id"], a["id"]);
        assert_eq!(list[1]["id"], b["id"]);
        assert_eq!(list[1]["to"], "+15550100");
        assert_eq!(spool.get(&id_a)?.as_deref(), Some(&b"first"[..]));
        assert_eq!(spool.get("../../etc/passwd")?, None);
        assert_eq!(spool.get(&"0".repeat(32))?, None);
        Ok(())
    }
}
