//! What a data directory holds: which files are relation files (checked page by page), which
//! are left out of an image (the same rules `pg_basebackup` follows), and how a relation file
//! name maps to a relation, fork and block number.

/// Directories whose contents are transient: the directory is kept, its contents are not.
pub const EXCLUDE_CONTENTS: &[&str] = &[
    "pg_wal",
    "pg_stat_tmp",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
];

/// Files never copied (at any depth for `pg_internal.init`).
pub const EXCLUDE_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "pg_internal.init",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
];

/// Blocks per 1 GiB relation segment file.
pub const RELSEG_SIZE: u32 = 131_072;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fork {
    Main,
    Fsm,
    Vm,
    Init,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelFile {
    /// Database oid (`None` for shared relations in `global/`).
    pub db: Option<u32>,
    pub relfilenode: u32,
    pub fork: Fork,
    /// Segment number (`.1`, `.2` ... suffix).
    pub segno: u32,
}

impl RelFile {
    /// Block number within the fork of block `i` of this segment file.
    pub fn block(&self, i: u32) -> u32 {
        self.segno.wrapping_mul(RELSEG_SIZE).wrapping_add(i)
    }
}

/// Parses a relation file's name, e.g. `16384`, `16384_fsm`, `16384.2`.
pub fn parse_name(name: &str) -> Option<(u32, Fork, u32)> {
    let (base, segno) = match name.split_once('.') {
        Some((b, s)) => (b, s.parse::<u32>().ok()?),
        None => (name, 0),
    };
    let (num, fork) = match base.split_once('_') {
        Some((n, "fsm")) => (n, Fork::Fsm),
        Some((n, "vm")) => (n, Fork::Vm),
        Some((n, "init")) => (n, Fork::Init),
        Some(_) => return None,
        None => (base, Fork::Main),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((num.parse().ok()?, fork, segno))
}

/// Classifies a data-directory-relative path (`base/5/16384.1`, `global/1262`) as a relation
/// file, or `None` for anything else.
pub fn relation(rel: &str) -> Option<RelFile> {
    let parts: Vec<&str> = rel.split('/').collect();
    let (db, name) = match parts.as_slice() {
        ["global", name] => (None, *name),
        ["base", db, name] => (Some(db.parse().ok()?), *name),
        ["pg_tblspc", _, _, db, name] => (Some(db.parse().ok()?), *name),
        _ => return None,
    };
    let (relfilenode, fork, segno) = parse_name(name)?;
    Some(RelFile {
        db,
        relfilenode,
        fork,
        segno,
    })
}

/// A temporary relation (`t3_16384`), never copied.
pub fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let Some((backend, file)) = rest.split_once('_') else {
        return false;
    };
    !backend.is_empty() && backend.bytes().all(|b| b.is_ascii_digit()) && parse_name(file).is_some()
}

/// Files and directories left out of an image, by name and parent-relative path.
pub fn excluded(rel: &str, name: &str, is_dir: bool) -> bool {
    if is_dir {
        return name.starts_with("pgsql_tmp");
    }
    EXCLUDE_FILES.contains(&name)
        || name.starts_with("pgsql_tmp")
        || is_temp_relation(name)
        || (rel.contains('/') && EXCLUDE_CONTENTS.iter().any(|d| parent_is(rel, d)))
}

fn parent_is(rel: &str, dir: &str) -> bool {
    rel.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_relation_files() {
        assert_eq!(
            relation("base/5/16384.2"),
            Some(RelFile {
                db: Some(5),
                relfilenode: 16384,
                fork: Fork::Main,
                segno: 2
            })
        );
        assert_eq!(relation("global/1262_vm").unwrap().fork, Fork::Vm);
        assert_eq!(relation("base/5/16384_init").unwrap().fork, Fork::Init);
        assert!(relation("base/5/PG_VERSION").is_none());
        assert!(relation("base/5/pg_filenode.map").is_none());
        assert!(relation("global/pg_control").is_none());
        assert!(relation("pg_xact/0000").is_none());
        assert!(relation("base/5/16384_bogus").is_none());
        assert_eq!(
            relation("base/5/16384.2").unwrap().block(3),
            2 * RELSEG_SIZE + 3
        );
    }

    #[test]
    fn excludes_what_pg_basebackup_excludes() {
        assert!(excluded("postmaster.pid", "postmaster.pid", false));
        assert!(excluded(
            "pg_wal/000000010000000000000001",
            "000000010000000000000001",
            false
        ));
        assert!(excluded(
            "base/5/pg_internal.init",
            "pg_internal.init",
            false
        ));
        assert!(excluded("base/5/t3_16384", "t3_16384", false));
        assert!(excluded("base/pgsql_tmp", "pgsql_tmp", true));
        assert!(!excluded("pg_wal", "pg_wal", true));
        assert!(!excluded("base/5/16384", "16384", false));
        assert!(!excluded("pg_xact/0000", "0000", false));
    }
}
