//! Kept scratch copies: a scratch directory (a verification's restored data directory) left in
//! place after its run, for inspection, until a deadline.
//!
//! ```text
//! HOME/AREA/NAME/                  the copy (its server stopped)
//! HOME/AREA/.kept-NAME.json        {"format": 1, "owner": "shop", "until_us": 1765063200000000}
//! ```
//!
//! Invariants:
//! - The marker is written durably before the directory's lock is released, so
//!   [`crate::home::Home::sweep_scratch`] never sees a kept copy without its marker: a directory
//!   without one is what a killed process left, and goes at once.
//! - A copy is removed by the first sweep after `until_us`, or earlier by
//!   [`crate::home::Home::release_kept`] (a newer run of the same owner replaces it): at most
//!   one kept copy per owner, so keeping never grows without bound.
//! - A marker that does not parse keeps nothing; one whose directory is gone is removed.

use std::path::{Path, PathBuf};

/// The marker's format version.
pub const FORMAT: u32 = 1;

/// What a marker says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Kept {
    pub format: u32,
    /// Whose copy it is (a cluster's name, for verifications).
    pub owner: String,
    /// Kept until this time (microseconds since the epoch).
    pub until_us: i64,
}

const PREFIX: &str = ".kept-";
const SUFFIX: &str = ".json";

/// The marker of `dir` (`AREA/NAME` → `AREA/.kept-NAME.json`).
pub fn marker_path(dir: &Path) -> Option<PathBuf> {
    let name = dir.file_name()?.to_string_lossy();
    Some(dir.parent()?.join(format!("{PREFIX}{name}{SUFFIX}")))
}

/// The directory name a marker file name stands for.
pub fn dir_name_of_marker(file_name: &str) -> Option<&str> {
    file_name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)
}

/// What `dir`'s marker says, if it has one that parses.
pub fn read(dir: &Path) -> Option<Kept> {
    let text = std::fs::read(marker_path(dir)?).ok()?;
    serde_json::from_slice::<Kept>(&text)
        .ok()
        .filter(|k| k.format == FORMAT)
}

/// Whether `dir` is still kept at `now_us`.
pub fn is_kept(dir: &Path, now_us: i64) -> bool {
    read(dir).is_some_and(|k| k.until_us > now_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_name_their_directory() {
        let m = marker_path(Path::new("/h/verify/data-abc")).unwrap();
        assert_eq!(m, Path::new("/h/verify/.kept-data-abc.json"));
        assert_eq!(dir_name_of_marker(".kept-data-abc.json"), Some("data-abc"));
        assert_eq!(dir_name_of_marker("data-abc"), None);
        assert_eq!(dir_name_of_marker(".kept-x.txt"), None);
    }

    /// The golden marker of docs/FORMAT.md.
    #[test]
    fn the_marker_reads_as_documented() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data-abc");
        std::fs::create_dir(&dir).unwrap();
        let m = marker_path(&dir).unwrap();
        std::fs::write(
            &m,
            br#"{"format": 1, "owner": "shop", "until_us": 1765063200000000}"#,
        )
        .unwrap();
        assert_eq!(
            read(&dir),
            Some(Kept {
                format: 1,
                owner: "shop".into(),
                until_us: 1_765_063_200_000_000
            })
        );
        assert!(is_kept(&dir, 1_765_063_199_999_999));
        assert!(!is_kept(&dir, 1_765_063_200_000_000));
        std::fs::write(&m, br#"{"format": 2, "owner": "shop", "until_us": 9}"#).unwrap();
        assert_eq!(read(&dir), None, "an unknown format keeps nothing");
        std::fs::write(&m, b"garbage").unwrap();
        assert!(!is_kept(&dir, 0));
    }
}
