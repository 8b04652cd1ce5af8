//! The section `--write-docs` writes: a header (when, which commit, which command, which machine,
//! what else ran) above the summary table, placed between the markers of `docs/benchmarks.md`.

use std::path::{Path, PathBuf};

use crate::machine;
use crate::summary::{self, MarkerError, Summary};

/// What the header says about the run.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub started_unix: u64,
    pub seconds: f64,
    /// `git rev-parse --short HEAD`, `-dirty` when tracked files differ.
    pub commit: Option<String>,
    pub command: String,
    /// [`machine::Machine::line`].
    pub machine: String,
    /// [`crate::others::describe`].
    pub others: String,
    /// The operator's `--note`.
    pub note: Option<String>,
}

/// The header and the table, as they go between the markers (and are printed at the end of a run).
pub fn section(info: &RunInfo, summary: &Summary) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Run of {} ({}), commit `{}`, {}.\n\n",
        machine::utc(info.started_unix),
        if info.seconds < 120.0 {
            format!("{:.0} s", info.seconds)
        } else {
            format!("{:.0} min", info.seconds / 60.0)
        },
        info.commit.as_deref().unwrap_or("unknown"),
        info.command
    ));
    out.push_str(&format!("Machine: {}.\n\n", info.machine));
    out.push_str(&format!("Meanwhile: {}.\n\n", info.others));
    if let Some(note) = &info.note {
        out.push_str(&format!("Note: {note}\n\n"));
    }
    out.push_str(
        "Medians of interleaved rounds; ratio = fabric / reference (higher is better for rates, \
         lower for times and CPU); the detailed tables are in the run's output.\n\n",
    );
    out.push_str(&summary.render());
    out
}

/// Why the docs could not be written.
#[derive(Debug)]
pub enum WriteError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Markers {
        path: PathBuf,
        source: MarkerError,
    },
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Read { path, source } => write!(f, "reading {}: {source}", path.display()),
            WriteError::Markers { path, source } => write!(f, "{}: {source}", path.display()),
            WriteError::Write { path, source } => write!(f, "writing {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WriteError::Read { source, .. } | WriteError::Write { source, .. } => Some(source),
            WriteError::Markers { source, .. } => Some(source),
        }
    }
}

/// What the file says above a generated section, so nobody edits inside it by hand.
const GENERATED: &str = "<!-- written by fabric-bench --write-docs (make bench): the next run \
                         replaces everything up to bench:latest:end -->";

/// `path`'s text with `section` between its markers.
fn replaced(path: &Path, section: &str) -> Result<String, WriteError> {
    let doc = std::fs::read_to_string(path).map_err(|source| WriteError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    summary::replace_between(&doc, &format!("{GENERATED}\n\n{section}")).map_err(|source| {
        WriteError::Markers {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Whether `path` can take a section, checked before a run so a long run does not end in a
/// document without markers.
pub fn check(path: &Path) -> Result<(), WriteError> {
    replaced(path, "").map(drop)
}

/// Replaces the section between the markers of `path` with `section`, through a temporary file
/// renamed over it, so a failed write leaves the old document whole.
pub fn write(path: &Path, section: &str) -> Result<(), WriteError> {
    let new = replaced(path, section)?;
    let tmp = path.with_extension("md.bench-tmp");
    let write_err = |source| WriteError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, new).map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::{BEGIN, END, Row};

    fn info() -> RunInfo {
        RunInfo {
            started_unix: 1_795_442_759,
            seconds: 1500.0,
            commit: Some("abc1234-dirty".into()),
            command: "`fabric-bench --rounds 3`".into(),
            machine: "`box`: AMD EPYC".into(),
            others: "no other work on the machine during the run (2 CPU-s outside the bench)"
                .into(),
            note: Some("a chaos campaign ran on the side".into()),
        }
    }

    #[test]
    fn the_section_names_run_machine_and_rows() {
        let mut s = Summary::default();
        s.push(Row::new("store", "x", "writes/s").fabric(5.0));
        let text = section(&info(), &s);
        assert!(
            text.contains(
                "Run of 2026-11-23 14:05 UTC (25 min), commit `abc1234-dirty`, `fabric-bench --rounds 3`."
            ),
            "{text}"
        );
        assert!(text.contains("Machine: `box`: AMD EPYC."));
        assert!(text.contains("Meanwhile: no other work"));
        assert!(text.contains("Note: a chaos campaign ran on the side"));
        assert!(text.ends_with(&s.render()));
        assert!(
            !text.contains(BEGIN) && !text.contains(END),
            "markers stay the document's"
        );
    }

    #[test]
    fn writes_between_the_markers_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("benchmarks.md");
        std::fs::write(
            &path,
            format!("# B\n{BEGIN}\nold\n{END}\n## Earlier\nkept\n"),
        )
        .expect("file io");
        check(&path).expect("markers in place");
        write(&path, "new table").expect("file io");
        assert_eq!(
            std::fs::read_to_string(&path).expect("file io"),
            format!("# B\n{BEGIN}\n{GENERATED}\n\nnew table\n{END}\n## Earlier\nkept\n")
        );
        std::fs::write(&path, "no markers\n").expect("file io");
        assert!(matches!(check(&path), Err(WriteError::Markers { .. })));
        assert!(matches!(write(&path, "x"), Err(WriteError::Markers { .. })));
        assert_eq!(
            std::fs::read_to_string(&path).expect("file io"),
            "no markers\n"
        );
        assert!(matches!(
            write(&dir.path().join("missing.md"), "x"),
            Err(WriteError::Read { .. })
        ));
    }
}
