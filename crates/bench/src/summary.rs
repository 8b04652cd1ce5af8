//! The run's summary: every row the run measured, one line each, in one table (area, measurement,
//! unit, the fabric's figure, the reference figure and what it is, their ratio, the goal and
//! whether it is met), and the rendering of that table with the run's header into the section of
//! `docs/benchmarks.md` between [`BEGIN`] and [`END`]. The detailed tables are still printed where
//! each part measures; this is what `--write-docs` keeps.
//!
//! Everything here is pure (text in, text out): the caller gathers the machine and reads and writes
//! the file.

use std::fmt::Write as _;

/// The marker lines that fence the generated section in the docs.
pub const BEGIN: &str = "<!-- bench:latest:begin -->";
pub const END: &str = "<!-- bench:latest:end -->";

/// What an issue asked of a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// fabric / reference at least this (throughput).
    RatioAtLeast(f64),
    /// fabric / reference strictly under this (latency, CPU).
    RatioBelow(f64),
    /// The fabric's own figure at most this, in the row's unit (a time, a count).
    AtMost(f64),
}

impl Goal {
    fn text(self, unit: &str) -> String {
        match self {
            // Goals are round numbers: shown as written (1.5, 5, 0.5).
            Goal::RatioAtLeast(x) => format!("≥ {x}x"),
            Goal::RatioBelow(x) => format!("< {x}x"),
            Goal::AtMost(0.0) => "0".to_string(),
            Goal::AtMost(x) => format!("≤ {x} {unit}"),
        }
    }
}

/// One measured row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Which part of the bench (and issue) the row belongs to.
    pub area: String,
    pub measurement: String,
    pub unit: String,
    /// The fabric's figure; `None` on a reference-only row, or when it never happened (a backend
    /// never marked down).
    pub fabric: Option<f64>,
    /// The figure it is compared with, and what that is ("raw fsync", "Postfix", ...).
    pub reference: Option<(f64, String)>,
    pub goal: Option<Goal>,
}

impl Row {
    pub fn new(area: &str, measurement: impl Into<String>, unit: &str) -> Row {
        Row {
            area: area.to_string(),
            measurement: measurement.into(),
            unit: unit.to_string(),
            fabric: None,
            reference: None,
            goal: None,
        }
    }

    pub fn fabric(mut self, value: impl Into<Option<f64>>) -> Row {
        self.fabric = value.into();
        self
    }

    pub fn against(mut self, value: f64, what: &str) -> Row {
        self.reference = Some((value, what.to_string()));
        self
    }

    pub fn goal(mut self, goal: Goal) -> Row {
        self.goal = Some(goal);
        self
    }

    /// fabric / reference, when both are there and the reference is not zero.
    pub fn ratio(&self) -> Option<f64> {
        match (self.fabric, &self.reference) {
            (Some(f), Some((r, _))) if *r != 0.0 => Some(f / r),
            _ => None,
        }
    }

    /// Whether the goal is met; `None` without a goal. A goal whose figure is missing is not met.
    pub fn met(&self) -> Option<bool> {
        Some(match self.goal? {
            Goal::RatioAtLeast(x) => self.ratio().is_some_and(|r| r >= x),
            Goal::RatioBelow(x) => self.ratio().is_some_and(|r| r < x),
            Goal::AtMost(x) => self.fabric.is_some_and(|f| f <= x),
        })
    }
}

/// Every row of one run, and the parts it did not measure (with why).
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub rows: Vec<Row>,
    pub skipped: Vec<(String, String)>,
}

impl Summary {
    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn skip(&mut self, part: &str, why: impl Into<String>) {
        self.skipped.push((part.to_string(), why.into()));
    }

    /// The table as Markdown with padded columns, readable in a terminal and rendered in the docs;
    /// then one line per skipped part.
    pub fn render(&self) -> String {
        const HEADER: [&str; 9] = [
            "area",
            "measurement",
            "unit",
            "fabric",
            "reference",
            "reference is",
            "ratio",
            "goal",
            "met",
        ];
        // Numbers right-aligned, text left-aligned.
        const RIGHT: [bool; 9] = [false, false, false, true, true, false, true, false, false];
        let cells: Vec<[String; 9]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.area.clone(),
                    r.measurement.clone(),
                    r.unit.clone(),
                    match (r.fabric, r.goal) {
                        (Some(f), _) => number(f),
                        (None, Some(_)) => "never".to_string(),
                        (None, None) => "-".to_string(),
                    },
                    r.reference
                        .as_ref()
                        .map_or("-".to_string(), |(v, _)| number(*v)),
                    r.reference
                        .as_ref()
                        .map_or("-".to_string(), |(_, w)| w.clone()),
                    r.ratio().map_or("-".to_string(), |x| format!("{x:.2}x")),
                    r.goal.map_or("-".to_string(), |g| g.text(&r.unit)),
                    match r.met() {
                        Some(true) => "yes".to_string(),
                        Some(false) => "**no**".to_string(),
                        None => "-".to_string(),
                    },
                ]
            })
            .collect();
        let mut width: [usize; 9] = HEADER.map(|h| h.chars().count());
        for row in &cells {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |row: &[String; 9]| {
            let mut s = String::from("|");
            for ((c, w), right) in row.iter().zip(width).zip(RIGHT) {
                if right {
                    let _ = write!(s, " {c:>w$} |");
                } else {
                    let _ = write!(s, " {c:<w$} |");
                }
            }
            s
        };
        let mut out = String::new();
        out.push_str(&line(&HEADER.map(String::from)));
        out.push('\n');
        out.push('|');
        // As wide as the cells (" text |"); a colon on the right end aligns numbers right.
        for (w, right) in width.iter().zip(RIGHT) {
            out.push_str(&"-".repeat(w + 1));
            out.push_str(if right { ":|" } else { "-|" });
        }
        out.push('\n');
        for row in &cells {
            out.push_str(&line(row));
            out.push('\n');
        }
        for (part, why) in &self.skipped {
            let _ = writeln!(out, "\nNot measured: {part} ({why}).");
        }
        out
    }
}

/// A figure with as many decimals as its size deserves: 10267, 24.6, 1.65, 0.004; whole numbers
/// (counts) with none.
pub fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || (v.fract() == 0.0 && a < 1e15) {
        // Counts (and round figures) without decimals.
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Why the generated section could not be placed. (Display and Error by hand: the bench takes no
/// new dependency for two enums, and the lock file is shared with other work.)
#[derive(Debug, PartialEq, Eq)]
pub enum MarkerError {
    /// The document lacks this marker line.
    Missing(&'static str),
    /// The document has this marker more than once.
    Repeated(&'static str),
    /// The end marker comes first.
    Reversed,
}

impl std::fmt::Display for MarkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MarkerError::Missing(m) => write!(
                f,
                "the document has no line {m}: add the pair of markers where the section goes"
            ),
            MarkerError::Repeated(m) => write!(f, "the document has {m} more than once"),
            MarkerError::Reversed => write!(f, "{END} comes before {BEGIN}"),
        }
    }
}

impl std::error::Error for MarkerError {}

/// `doc` with everything between the marker lines replaced by `section` (the markers stay, each on
/// its own line).
pub fn replace_between(doc: &str, section: &str) -> Result<String, MarkerError> {
    let find = |marker: &'static str| -> Result<usize, MarkerError> {
        let mut at = doc.match_indices(marker).map(|(i, _)| i);
        let first = at.next().ok_or(MarkerError::Missing(marker))?;
        if at.next().is_some() {
            return Err(MarkerError::Repeated(marker));
        }
        Ok(first)
    };
    let (begin, end) = (find(BEGIN)?, find(END)?);
    if end < begin {
        return Err(MarkerError::Reversed);
    }
    let mut out = String::with_capacity(doc.len() + section.len());
    out.push_str(&doc[..begin + BEGIN.len()]);
    out.push('\n');
    out.push_str(section.trim_matches('\n'));
    out.push('\n');
    out.push_str(&doc[end..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Summary {
        let mut s = Summary::default();
        s.push(
            Row::new("store", "raw append+fsync, 20 writer(s)", "writes/s")
                .against(10267.0, "raw fsync"),
        );
        s.push(
            Row::new(
                "store",
                "store enqueue, mirrored, concurrency 64",
                "writes/s",
            )
            .fabric(3807.0)
            .against(10267.0, "raw fsync @20")
            .goal(Goal::RatioAtLeast(1.0)),
        );
        s.push(
            Row::new("edge", "p99 through the edge", "ms")
                .fabric(30.86)
                .against(23.79, "straight")
                .goal(Goal::RatioBelow(1.15)),
        );
        s.push(
            Row::new("continuity", "death -> first relay accept", "s")
                .fabric(0.9)
                .goal(Goal::AtMost(5.0)),
        );
        s.push(
            Row::new("edge vs HAProxy", "marked down", "s")
                .fabric(None)
                .against(0.4, "HAProxy")
                .goal(Goal::AtMost(0.5)),
        );
        s.skip("SMTP vs Postfix", "--no-smtp");
        s
    }

    #[test]
    fn ratios_and_goals() {
        let s = sample();
        assert_eq!(s.rows[0].ratio(), None);
        assert_eq!(s.rows[0].met(), None);
        assert!((s.rows[1].ratio().expect("both figures") - 3807.0 / 10267.0).abs() < 1e-12);
        assert_eq!(s.rows[1].met(), Some(false));
        assert_eq!(s.rows[2].met(), Some(false), "x1.30 is not under x1.15");
        assert_eq!(s.rows[3].met(), Some(true));
        assert_eq!(
            s.rows[4].met(),
            Some(false),
            "never marked down misses the goal"
        );
        let fast = Row::new("a", "b", "ms")
            .fabric(1.0)
            .against(1.0, "x")
            .goal(Goal::RatioBelow(1.15));
        assert_eq!(fast.met(), Some(true));
        let zero = Row::new("a", "b", "x").fabric(5.0).against(0.0, "x");
        assert_eq!(zero.ratio(), None, "no ratio against zero");
    }

    #[test]
    fn renders_an_aligned_markdown_table() {
        let text = sample().render();
        let lines: Vec<&str> = text.lines().collect();
        // Header, separator, 5 rows, a blank line, the skipped part.
        assert_eq!(lines.len(), 9, "{text}");
        let widths: Vec<usize> = lines[..7].iter().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "aligned: {text}");
        assert!(lines[0].starts_with("| area "));
        let sep: Vec<&str> = lines[1].split('|').collect();
        assert!(sep[1].chars().all(|c| c == '-'), "{}", lines[1]);
        assert!(sep[4].ends_with(':'), "numbers right-aligned: {}", lines[1]);
        fn cols(l: &str) -> Vec<&str> {
            l.split('|').map(str::trim).collect()
        }
        assert_eq!(
            cols(lines[3]),
            [
                "",
                "store",
                "store enqueue, mirrored, concurrency 64",
                "writes/s",
                "3807",
                "10267",
                "raw fsync @20",
                "0.37x",
                "≥ 1x",
                "**no**",
                ""
            ]
        );
        assert_eq!(
            cols(lines[2])[4],
            "-",
            "reference-only row has no fabric figure"
        );
        assert_eq!(cols(lines[5])[8], "≤ 5 s");
        assert_eq!(cols(lines[5])[9], "yes");
        assert_eq!(cols(lines[6])[4], "never");
        assert_eq!(lines[8], "Not measured: SMTP vs Postfix (--no-smtp).");
    }

    #[test]
    fn numbers_keep_sensible_decimals() {
        assert_eq!(number(10267.4), "10267");
        assert_eq!(number(24.61), "24.6");
        assert_eq!(number(1.654), "1.65");
        assert_eq!(number(0.0042), "0.004");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(10.0), "10");
        assert_eq!(number(9.0), "9");
        assert_eq!(Goal::AtMost(0.0).text("sessions"), "0");
        assert_eq!(Goal::RatioBelow(1.15).text("ms"), "< 1.15x");
    }

    #[test]
    fn replaces_only_between_the_markers() {
        let doc = format!("# Title\n\nintro\n{BEGIN}\nold table\nold line\n{END}\n\nafter\n");
        let new = replace_between(&doc, "\n| new |\n\n").expect("markers in place");
        assert_eq!(
            new,
            format!("# Title\n\nintro\n{BEGIN}\n| new |\n{END}\n\nafter\n")
        );
        // Replacing again gives the same document: the markers survive.
        assert_eq!(
            replace_between(&new, "| new |").expect("markers in place"),
            new
        );
        // Empty section between adjacent markers.
        let tight = format!("a {BEGIN}{END} b");
        assert_eq!(
            replace_between(&tight, "x").expect("markers in place"),
            format!("a {BEGIN}\nx\n{END} b")
        );
    }

    #[test]
    fn refuses_documents_without_a_clear_place() {
        assert_eq!(
            replace_between("no markers", "x"),
            Err(MarkerError::Missing(BEGIN))
        );
        assert_eq!(
            replace_between(&format!("{BEGIN}\n"), "x"),
            Err(MarkerError::Missing(END))
        );
        assert_eq!(
            replace_between(&format!("{END}\n{BEGIN}\n"), "x"),
            Err(MarkerError::Reversed)
        );
        assert_eq!(
            replace_between(&format!("{BEGIN}\n{END}\n{BEGIN}\n{END}\n"), "x"),
            Err(MarkerError::Repeated(BEGIN))
        );
    }
}
