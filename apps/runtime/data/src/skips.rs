//! Counts of rows left out of a dataset, by reason.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Rows left out while encoding a dataset, counted by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skips {
    /// Empty (or null) text.
    pub empty: usize,
    /// Too long to encode within the length limit, even after truncation.
    pub too_long: usize,
    /// An image that could not be decoded.
    pub undecodable: usize,
    /// A label that is missing, null or negative (`-1` marks unlabelled rows on the hub).
    pub missing_label: usize,
    /// Bytes of text that were not valid UTF-8 and were replaced by U+FFFD (their rows are
    /// kept, so this is not part of [`Skips::total`]).
    #[serde(default)]
    pub invalid_utf8_bytes: usize,
}

impl Skips {
    /// All skipped rows.
    pub fn total(&self) -> usize {
        self.empty + self.too_long + self.undecodable + self.missing_label
    }
    /// Whether no row was skipped.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }
    /// Whether there is nothing to report: no row skipped, no byte replaced.
    pub fn is_clean(&self) -> bool {
        self.is_empty() && self.invalid_utf8_bytes == 0
    }
    /// Add another count.
    pub fn add(&mut self, other: &Skips) {
        self.empty += other.empty;
        self.too_long += other.too_long;
        self.undecodable += other.undecodable;
        self.missing_label += other.missing_label;
        self.invalid_utf8_bytes += other.invalid_utf8_bytes;
    }
}

impl std::ops::AddAssign for Skips {
    fn add_assign(&mut self, other: Skips) {
        self.add(&other);
    }
}

impl fmt::Display for Skips {
    /// `no rows skipped`, or `5 rows skipped (2 empty, 3 missing label)`, then `; 12 invalid
    /// UTF-8 bytes replaced` when some were.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total();
        let replaced = match self.invalid_utf8_bytes {
            0 => String::new(),
            n => format!("; {n} invalid UTF-8 byte{} replaced by U+FFFD", if n == 1 { "" } else { "s" }),
        };
        if total == 0 {
            return write!(f, "no rows skipped{replaced}");
        }
        let parts: Vec<String> =
            [(self.empty, "empty"), (self.too_long, "too long"), (self.undecodable, "undecodable"), (self.missing_label, "missing label")]
                .iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, what)| format!("{n} {what}"))
                .collect();
        write!(f, "{total} row{} skipped ({}){replaced}", if total == 1 { "" } else { "s" }, parts.join(", "))
    }
}
