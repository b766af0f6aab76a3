//! Metadata check and repair results.

use serde::Serialize;

/// What a check found, and (in repair mode) what it fixed.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct CheckReport {
    /// Problems found, one line each, naming the file.
    pub problems: Vec<String>,
    /// Repairs made (empty unless repair was asked for).
    pub repaired: Vec<String>,
}

impl CheckReport {
    /// True when nothing was wrong, or everything wrong was repaired.
    pub fn is_clean(&self) -> bool {
        self.problems.len() == self.repaired.len()
    }

    /// Record a problem.
    pub fn problem(&mut self, text: impl Into<String>) {
        self.problems.push(text.into());
    }

    /// Record a repair.
    pub fn repaired(&mut self, text: impl Into<String>) {
        self.repaired.push(text.into());
    }

    /// Append another report (for multi-extent disks and chains).
    pub fn merge(&mut self, other: CheckReport) {
        self.problems.extend(other.problems);
        self.repaired.extend(other.repaired);
    }
}
