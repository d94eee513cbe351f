//! Durable file-system primitives: write to a temporary name, fsync, rename, fsync the
//! directory. Nothing else in the engine renames files into place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ids::random_bytes;

/// A fresh temporary name in `dir`, recognisable by the `.tmp-` prefix.
pub fn temp_path(dir: &Path) -> PathBuf {
    let mut r = [0u8; 8];
    random_bytes(&mut r);
    dir.join(format!(".tmp-{}", hex::encode(r)))
}

pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(".tmp-")
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes `tmp` durable under the name `dest`: fsync the file, rename, fsync the directory.
pub fn commit_rename(tmp: &Path, dest: &Path) -> io::Result<()> {
    File::open(tmp)?.sync_all()?;
    fs::rename(tmp, dest)?;
    fsync_dir(dest.parent().unwrap_or(Path::new(".")))
}

/// Makes the complete file `tmp` durable under the name `dest`, only if `dest` does not exist:
/// fsync, `link` (which never replaces), remove `tmp`, fsync the directory. A `dest` created by
/// someone else meanwhile is an `AlreadyExists` error and stays untouched; `tmp` is removed
/// either way.
pub fn commit_new(tmp: &Path, dest: &Path) -> io::Result<()> {
    let r = File::open(tmp)
        .and_then(|f| f.sync_all())
        .and_then(|()| fs::hard_link(tmp, dest));
    let _ = fs::remove_file(tmp);
    r?;
    fsync_dir(dest.parent().unwrap_or(Path::new(".")))
}

/// Writes `data` durably to a fresh temporary file of `dir` with `mode`; returns its path.
/// On failure nothing is left behind.
fn write_temp(dir: &Path, data: &[u8], mode: u32) -> io::Result<PathBuf> {
    let tmp = temp_path(dir);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes `data` to `dest` atomically and durably with the given mode. On failure nothing is
/// left behind: neither a changed `dest` nor the temporary file.
pub fn write_atomic(dest: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = write_temp(dir, data, mode)?;
    if let Err(e) = fs::rename(&tmp, dest) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(dir)
}

/// Creates `dir` and any missing parents, fsyncing the directory that received each new
/// entry: a new directory survives a power loss once this returns (some filesystems log a
/// directory's entries only when the directory itself is synced).
pub fn create_dirs_durable(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    for d in missing.iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        fsync_dir(d.parent().unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

/// Creates `dir` (and parents) with the given mode on the last component.
pub fn create_dir_mode(dir: &Path, mode: u32) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

/// Writes `data` to `dest` durably with the given mode, only if `dest` does not exist yet:
/// the file is written under a temporary name and linked into place (`link` never replaces),
/// so two writers racing for one name leave exactly one complete file. Returns `false`
/// (writing nothing) when `dest` already exists.
pub fn write_new(dest: &Path, data: &[u8], mode: u32) -> io::Result<bool> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = write_temp(dir, data, mode)?;
    let linked = fs::hard_link(&tmp, dest);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            fsync_dir(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives `f` a length of at least `len` with every block allocated, without writing them: the
/// blocks read as zeros, and a later write into them cannot meet a full disk (PostgreSQL
/// expects that of a WAL segment). Where the file system cannot allocate, zeros are written.
pub fn allocate(f: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let off_len = libc::off_t::try_from(len).map_err(io::Error::other)?;
    // SAFETY: fallocate on a descriptor we own, with plain integer arguments.
    if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, off_len) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    let zeros = vec![0u8; 1 << 20];
    let mut at = f.metadata()?.len();
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        std::os::unix::fs::FileExt::write_all_at(f, &zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_gives_the_length_in_zeros_and_keeps_what_was_written() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("segment");
        let f = File::create(&p).unwrap();
        allocate(&f, 1 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"wal", 4096).unwrap();
        allocate(&f, 1 << 20).unwrap();
        let b = fs::read(&p).unwrap();
        assert_eq!(b.len(), 1 << 20);
        assert_eq!(&b[4096..4099], b"wal");
        assert!(b[..4096].iter().chain(&b[4099..]).all(|&x| x == 0));
        // Allocated, not a hole: the blocks are on disk (512-byte units).
        use std::os::unix::fs::MetadataExt;
        assert!(fs::metadata(&p).unwrap().blocks() * 512 >= 1 << 20);
    }

    #[test]
    fn write_new_never_replaces_and_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        assert!(write_new(&p, b"first", 0o600).unwrap());
        assert!(!write_new(&p, b"second", 0o600).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"first");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "only the file itself remains");
        // A failed atomic write (no such directory) leaves nothing either.
        assert!(write_atomic(&d.path().join("missing/x"), b"x", 0o600).is_err());
        create_dirs_durable(&d.path().join("a/b/c")).unwrap();
        assert!(d.path().join("a/b/c").is_dir());
        create_dirs_durable(&d.path().join("a/b/c")).unwrap();
    }
}
