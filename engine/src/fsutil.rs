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

/// Writes `data` to `dest` atomically and durably with the given mode.
pub fn write_atomic(dest: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = temp_path(dir);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, dest)?;
    fsync_dir(dir)
}

/// Creates `dir` (and parents) with the given mode on the last component.
pub fn create_dir_mode(dir: &Path, mode: u32) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}
