//! Everything Cairn knows about PostgreSQL itself: binaries, processes, page checksums,
//! relation file names and the control file.

pub mod checksum;
