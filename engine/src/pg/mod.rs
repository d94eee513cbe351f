//! Everything Cairn knows about PostgreSQL itself: binaries, processes, servers, page
//! checksums, relation file names and the control file.

pub mod binaries;
pub mod checksum;
pub mod leftover;
pub mod process;
pub mod relfile;
pub mod roles;
pub mod scratch;
pub mod server;
pub mod tar;
pub mod tls;
pub mod url;

pub use binaries::PgBinaries;
pub use process::OsUser;
pub use server::{Credentials, Server};
