//! Free space, checked before a restore writes anything.
//!
//! A restore that runs out of disk halfway wastes the operator's time and leaves a half-written
//! directory; so the space every phase will need is added up per file system and compared with
//! what is free before the first byte is fetched.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cairn_backup::{Error, Result};

/// The nearest existing directory at or above `p`.
fn existing(p: &Path) -> PathBuf {
    let mut cur = p.to_path_buf();
    while !cur.exists() {
        match cur.parent() {
            Some(parent) if parent != cur => cur = parent.to_path_buf(),
            _ => break,
        }
    }
    cur
}

/// Bytes available to an unprivileged writer on the file system holding `p`.
pub fn free_bytes(p: &Path) -> Result<u64> {
    let dir = existing(p);
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::Refused(format!("path {} contains a NUL byte", p.display())))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(Error::io(
            format!("read free space of {}", dir.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Refuses when the file systems of `needs` (path, bytes, what for) lack the space.
pub fn ensure(needs: &[(PathBuf, u64, &str)]) -> Result<()> {
    let mut by_dev: BTreeMap<u64, (PathBuf, u64, Vec<String>)> = BTreeMap::new();
    for (path, bytes, what) in needs {
        let dir = existing(path);
        let dev = std::fs::metadata(&dir)
            .map_err(|e| Error::io(format!("stat {}", dir.display()), e))?
            .dev();
        let e = by_dev.entry(dev).or_insert((dir, 0, vec![]));
        e.1 += bytes;
        e.2.push(format!("{what} {}", human(*bytes)));
    }
    for (dir, need, parts) in by_dev.values() {
        // Leave a margin: file system overhead, the logs, the catalog.
        let need = need + need / 20 + (64 << 20);
        let free = free_bytes(dir)?;
        if free < need {
            return Err(Error::Refused(format!(
                "not enough free disk: the file system of {} has {} free, the restore needs about \
                 {} there ({}); free some space or choose another target",
                dir.display(),
                human(free),
                human(need),
                parts.join(" + ")
            )));
        }
    }
    Ok(())
}

pub fn human(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_of_a_missing_path_is_its_parents() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b/c");
        let free = free_bytes(&deep).unwrap();
        assert!(free > 0);
        let err = ensure(&[(deep, u64::MAX / 4, "data")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not enough free disk"), "{err}");
        assert!(err.contains("data "), "{err}");
        assert_eq!(human(1536), "1.5 KiB");
    }
}
