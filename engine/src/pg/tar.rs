//! Unpacking a tar-format base backup (`pg_basebackup -Ft`) that an untrusted source sent.
//!
//! Invariants: only regular files and directories are written, each strictly below the
//! destination. A member whose path is absolute or has a `..`, `.` or empty part is refused;
//! links, devices and other member types are skipped and counted, never created, so no later
//! member can be written through a link. Files are created new (`O_EXCL | O_NOFOLLOW`), 0600;
//! directories 0700.

use std::fs::{self, OpenOptions};
use std::io::BufReader;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, IoContext, Result};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// Members of other types (links, devices, FIFOs), not created.
    pub skipped: u64,
}

fn member_path(dest: &Path, raw: &Path, archive: &Path) -> Result<PathBuf> {
    let mut out = dest.to_path_buf();
    let mut parts = 0;
    for c in raw.components() {
        match c {
            Component::Normal(p) => {
                out.push(p);
                parts += 1;
            }
            Component::CurDir if parts == 0 => {}
            _ => {
                return Err(Error::corrupt(
                    format!("base backup archive {}", archive.display()),
                    format!(
                        "member '{}' is not a plain relative path; nothing of it was written",
                        raw.display()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// Unpacks `archive` into `dest` (created if missing).
pub fn unpack(archive: &Path, dest: &Path) -> Result<Unpacked> {
    let f = fs::File::open(archive).ctx("open", archive)?;
    let mut ar = tar::Archive::new(BufReader::with_capacity(1 << 20, f));
    crate::fsutil::create_dir_mode(dest, 0o700).ctx("create directory", dest)?;
    let mut st = Unpacked::default();
    let bad = |e: std::io::Error| {
        Error::corrupt(
            format!("base backup archive {}", archive.display()),
            e.to_string(),
        )
    };
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path().map_err(bad)?.into_owned();
        let path = member_path(dest, &raw, archive)?;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                if path != dest {
                    crate::fsutil::create_dir_mode(&path, 0o700).ctx("create directory", &path)?;
                    st.dirs += 1;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if path == dest {
                    return Err(bad(std::io::Error::other("a file member without a name")));
                }
                if let Some(parent) = path.parent() {
                    crate::fsutil::create_dir_mode(parent, 0o700)
                        .ctx("create directory", parent)?;
                }
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .ctx("create file", &path)?;
                st.bytes += std::io::copy(&mut entry, &mut out).ctx("write", &path)?;
                st.files += 1;
            }
            _ => st.skipped += 1,
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(dir: &Path, members: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> PathBuf {
        let p = dir.join("a.tar");
        let mut b = tar::Builder::new(fs::File::create(&p).unwrap());
        for (name, kind, data, link) in members {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            // Written raw: the builder's own checks would refuse the hostile names.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.finish().unwrap();
        p
    }

    #[test]
    fn files_and_directories_are_unpacked_and_links_never_created() {
        let t = tempfile::tempdir().unwrap();
        let a = archive(
            t.path(),
            &[
                ("PG_VERSION", tar::EntryType::Regular, b"15\n", None),
                ("base/", tar::EntryType::Directory, b"", None),
                ("base/5/1259", tar::EntryType::Regular, &[7u8; 100], None),
                ("pg_wal", tar::EntryType::Symlink, b"", Some("/etc")),
                ("evil", tar::EntryType::Symlink, b"", Some("/etc")),
                ("hard", tar::EntryType::Link, b"", Some("PG_VERSION")),
            ],
        );
        let dest = t.path().join("out");
        let st = unpack(&a, &dest).unwrap();
        assert_eq!((st.files, st.dirs, st.bytes, st.skipped), (2, 1, 103, 3));
        assert_eq!(fs::read(dest.join("PG_VERSION")).unwrap(), b"15\n");
        assert_eq!(fs::read(dest.join("base/5/1259")).unwrap(), vec![7u8; 100]);
        assert!(fs::symlink_metadata(dest.join("evil")).is_err());
        assert!(fs::symlink_metadata(dest.join("hard")).is_err());
    }

    #[test]
    fn members_outside_the_destination_are_refused() {
        for name in ["../escape", "/etc/cron.d/x", "base/../../x"] {
            let t = tempfile::tempdir().unwrap();
            let a = archive(t.path(), &[(name, tar::EntryType::Regular, b"x", None)]);
            let dest = t.path().join("out");
            let e = unpack(&a, &dest).unwrap_err().to_string();
            assert!(e.contains("not a plain relative path"), "{name}: {e}");
            assert!(!t.path().join("escape").exists() && !t.path().join("x").exists());
        }
        // A file member cannot be written through a link an earlier member tried to make.
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("target");
        fs::create_dir(&target).unwrap();
        let a = archive(
            t.path(),
            &[
                (
                    "d",
                    tar::EntryType::Symlink,
                    b"",
                    Some(target.to_str().unwrap()),
                ),
                ("d/f", tar::EntryType::Regular, b"x", None),
            ],
        );
        unpack(&a, &t.path().join("out")).unwrap();
        assert!(!target.join("f").exists());
        assert!(t.path().join("out/d/f").is_file());
    }
}
