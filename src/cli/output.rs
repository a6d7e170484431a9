//! Shared output helpers: JSON for scripts, sizes and tables for people.

use std::io::Write;

use serde::Serialize;
use stratafs::error::{Error, IoContext, Result};

/// Print `value` as one line of JSON on stdout.
pub fn json(value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string(value)
        .map_err(|e| Error::io("encoding JSON output", std::io::Error::other(e)))?;
    line(&text)
}

/// Print one line on stdout; a closed pipe (`| head`) is not worth a panic.
pub fn line(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").ctx(|| "writing to stdout")
}

/// A byte count for people: `512 B`, `4.0 KiB`, `1.5 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Rows padded into aligned columns (the last column is not padded).
pub fn table(rows: &[Vec<String>]) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let mut s = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == r.len() {
                    s.push_str(cell);
                } else {
                    s.push_str(&format!("{cell:<w$}  ", w = widths[c]));
                }
            }
            s.trim_end().to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(50 << 20), "50.0 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
        assert_eq!(human_size(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn tables_align() {
        let rows = vec![
            vec!["ID".to_string(), "PARENT".to_string(), "X".to_string()],
            vec!["long-id".to_string(), "-".to_string(), "y".to_string()],
        ];
        assert_eq!(table(&rows), ["ID       PARENT  X", "long-id  -       y"]);
    }
}
