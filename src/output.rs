//! Output helpers: tables, sizes, JSON, error chains.

use cairn_engine::engine::fmt_time;
use cairn_engine::Lsn;

/// Prints rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

pub use cairn_units::fmt_size as bytes;

/// "0/3000150 (2026-11-23T11:06:16Z)".
pub fn lsn_time(l: Lsn, t: Option<i64>) -> String {
    match t {
        Some(t) => format!("{l} ({})", short_time(t)),
        None => l.to_string(),
    }
}

fn short_time(us: i64) -> String {
    let s = fmt_time(us);
    // Seconds precision is what a person reads.
    match s.find('.') {
        Some(dot) => format!("{}Z", &s[..dot]),
        None => s,
    }
}

pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// "outer: inner: innermost", without repeating a cause already in the message.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}
