//! `[history]`: the rollups of every point kept on the edge box for trends (`history.db`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::validate::Problem;

/// Local history of every point: 1-minute and 1-hour rollups in SQLite.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    /// Keep rollups at all. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// SQLite file (relative to the config file); default `history.db` next to the incident database.
    pub path: Option<PathBuf>,
    /// Days of 1-minute rollups kept. Default 35.
    #[serde(default = "default_minute_days")]
    pub minute_days: u32,
    /// Days of 1-hour rollups kept. Default 400.
    #[serde(default = "default_hour_days")]
    pub hour_days: u32,
    /// Most bytes the database may take; when full, the oldest 1-minute rollups go first. Default
    /// 1 GiB, at least 1 MiB.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

impl Default for History {
    fn default() -> Self {
        Self {
            enabled: true,
            path: None,
            minute_days: default_minute_days(),
            hour_days: default_hour_days(),
            max_bytes: default_max_bytes(),
        }
    }
}

impl History {
    /// The database file: `path`, or `history.db` beside `incidents`.
    pub fn db_path(&self, incidents: &Path) -> PathBuf {
        self.path.clone().unwrap_or_else(|| incidents.with_file_name("history.db"))
    }
}

fn yes() -> bool {
    true
}

fn default_minute_days() -> u32 {
    35
}

fn default_hour_days() -> u32 {
    400
}

fn default_max_bytes() -> u64 {
    1 << 30
}

/// Checks `[history]`; every problem with its key path.
pub(super) fn validate(h: &mut History, base: &Path) -> Vec<Problem> {
    let mut p = Vec::new();
    if let Some(path) = h.path.as_mut() {
        if path.is_relative() {
            *path = base.join(&*path);
        }
    }
    if !(1..=3_650).contains(&h.minute_days) {
        p.push(Problem {
            path: "history.minute_days".into(),
            message: format!("{}; expected 1 to 3650 days of 1-minute rollups", h.minute_days),
        });
    }
    if !(1..=36_500).contains(&h.hour_days) {
        p.push(Problem {
            path: "history.hour_days".into(),
            message: format!("{}; expected 1 to 36500 days of 1-hour rollups", h.hour_days),
        });
    } else if h.hour_days < h.minute_days {
        p.push(Problem {
            path: "history.hour_days".into(),
            message: format!(
                "{} is shorter than history.minute_days ({}); expected hourly rollups kept at least as long",
                h.hour_days, h.minute_days
            ),
        });
    }
    if h.max_bytes < 1 << 20 {
        p.push(Problem {
            path: "history.max_bytes".into(),
            message: format!("{}; expected at least 1048576 (1 MiB)", h.max_bytes),
        });
    }
    p
}

#[cfg(test)]
mod tests {
    use crate::config::{from_str, ConfigError};

    #[test]
    fn problems_name_the_file_the_key_and_what_was_expected() {
        let text = "[site]\nid = \"p\"\n[history]\nminute_days = 0\nhour_days = 10\nmax_bytes = 10\npath = \"h.db\"\n";
        let err = from_str(text, "site.toml".as_ref(), "/etc/pw".as_ref()).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("site.toml"), "{shown}");
        let problems = err.problems();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["history.minute_days", "history.max_bytes"], "{problems:?}");
        assert!(problems.iter().all(|(_, m)| m.contains("expected")), "{problems:?}");
        let text = "[site]\nid = \"p\"\n[history]\nminute_days = 40\nhour_days = 30\n";
        let err = from_str(text, "site.toml".as_ref(), "/etc/pw".as_ref()).unwrap_err();
        assert_eq!(err.problems()[0].0, "history.hour_days");
        let err = from_str("[site]\nid = \"p\"\n[history]\nenable = true\n", "s.toml".as_ref(), ".".as_ref());
        assert!(matches!(err, Err(ConfigError::Syntax { .. })), "unknown keys are refused");
        let c = from_str("[site]\nid = \"p\"\n[history]\npath = \"h.db\"\n", "s.toml".as_ref(), "/etc/pw".as_ref())
            .unwrap();
        assert_eq!(c.history.db_path("/x/incidents.db".as_ref()), std::path::Path::new("/etc/pw/h.db"));
        assert!(c.history.enabled);
        assert_eq!((c.history.minute_days, c.history.hour_days), (35, 400));
    }
}
