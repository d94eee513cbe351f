//! Crash points for crash-safety tests.
//!
//! When the environment variable `CAIRN_FAILPOINT` names a point (a comma-separated list;
//! `name@N` fires on the N-th hit), reaching it kills the process with SIGKILL — exactly what
//! `kill -9` does, with no destructor, flush or cleanup running. Without the variable the
//! points cost one cached lookup.
//!
//! When `CAIRN_STALL` names a point (a comma-separated list), an async task reaching it waits
//! forever instead ([`stall`]): a test makes a phase last as long as it needs (a run cut off by
//! its time limit at a known place) without timing luck.
//!
//! When `CAIRN_FAILPOINT_TRACE` names a file, every point reached appends its name and a
//! newline to it in one `write` (the kernel keeps it when the process is killed a moment
//! later): a test that kills a command at a random moment reads there which points the
//! command had passed, that is, the phase the kill landed in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

fn armed() -> &'static HashMap<String, u64> {
    static ARMED: OnceLock<HashMap<String, u64>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("CAIRN_FAILPOINT")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| match s.split_once('@') {
                Some((n, k)) => (n.to_string(), k.parse().unwrap_or(1)),
                None => (s.to_string(), 1),
            })
            .collect()
    })
}

fn counters() -> &'static Mutex<HashMap<String, AtomicU64>> {
    static C: OnceLock<Mutex<HashMap<String, AtomicU64>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

fn trace() -> Option<&'static Mutex<std::fs::File>> {
    static TRACE: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
    TRACE
        .get_or_init(|| {
            let path = std::env::var_os("CAIRN_FAILPOINT_TRACE")?;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
                .map(Mutex::new)
        })
        .as_ref()
}

/// Records `name` in the trace file when there is one; never returns if `CAIRN_STALL` names
/// it (see the module's header).
pub async fn stall(name: &str) {
    static STALLS: OnceLock<Vec<String>> = OnceLock::new();
    let stalls = STALLS.get_or_init(|| {
        std::env::var("CAIRN_STALL")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    });
    record(name);
    if stalls.iter().any(|s| s == name) {
        eprintln!("cairn: stall point '{name}' reached: waiting forever (CAIRN_STALL)");
        std::future::pending::<()>().await;
    }
}

fn record(name: &str) {
    if let Some(t) = trace() {
        use std::io::Write;
        let f = t.lock().unwrap_or_else(|e| e.into_inner());
        // A trace only tests read: a failed write loses a line of it, nothing else.
        let _ = (&*f).write_all(format!("{name}\n").as_bytes());
    }
}

/// Records `name` in the trace file when there is one; kills the process if `name` is armed
/// and this is the armed hit.
pub fn hit(name: &str) {
    record(name);
    let Some(&nth) = armed().get(name) else {
        return;
    };
    let count = {
        let mut c = counters().lock().unwrap_or_else(|e| e.into_inner());
        c.entry(name.to_string())
            .or_insert_with(|| AtomicU64::new(0))
            .fetch_add(1, Ordering::SeqCst)
            + 1
    };
    if count == nth {
        eprintln!("cairn: failpoint '{name}' reached: killing this process (SIGKILL)");
        // SAFETY: sending a signal to our own pid has no memory-safety implications.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
