//! Shared harness for the end-to-end tests: a fresh data directory per test, the real `cairn`
//! binary, real PostgreSQL servers.
#![allow(dead_code)]

pub mod attacker;
pub mod garage;
pub mod http;
pub mod liar;
pub mod plain;
pub mod protection;

// Not every test crate uses every helper.
#[allow(unused_imports)]
pub use http::{api, http_get, http_get_with};
#[allow(unused_imports)]
pub use plain::{pg_ctl_start, Plain};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub extra_env: Vec<(String, String)>,
}

/// A temporary directory the postgres OS user can traverse (computes live below it).
pub fn tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("cairn-test-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    d
}

impl Env {
    pub fn new() -> Env {
        let dir = tempdir();
        let home = dir.path().join("home");
        Env {
            dir,
            home,
            extra_env: Vec::new(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.args(args)
            .env("CAIRN_HOME", &self.home)
            .env_remove("CAIRN_CLUSTER")
            .env_remove("CAIRN_CATALOG")
            .env_remove("CAIRN_FAILPOINT")
            .env_remove("CAIRN_STALL");
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    /// Runs cairn to its end and returns what it printed. A command still running after
    /// [`command_timeout`] is killed and fails the test with what it had printed: a hang is a
    /// failure with a name, not a suite that never ends.
    #[track_caller]
    pub fn run(&self, args: &[&str]) -> Output {
        let child = self
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run cairn");
        let pid = child.id() as i32;
        let (done, finished) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let out = child.wait_with_output();
            let _ = done.send(());
            out
        });
        let limit = command_timeout();
        if finished.recv_timeout(limit).is_err() {
            // SAFETY: signalling our own child, which has not been reaped (the waiter is
            // still waiting for it).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let out = waiter.join().unwrap().expect("wait for cairn");
            panic!(
                "cairn {args:?} still running after {} s: killed\nstdout: {}\nstderr: {}",
                limit.as_secs(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        waiter.join().unwrap().expect("wait for cairn")
    }

    /// Runs cairn and insists on success; returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cairn {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs cairn and insists on failure with exit code 1; returns stderr.
    #[track_caller]
    pub fn fail(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "cairn {args:?} should fail with exit code 1:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    #[track_caller]
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok(&a);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("cairn {args:?}: bad JSON ({e}): {out}"))
    }

    /// Runs cairn (insisting on success) under `strace` and returns its stdout and the bytes its
    /// write system calls put into each file below `dir` (by path relative to `dir`), as the
    /// kernel answered them: a measure of what a command wrote that does not depend on what the
    /// command says about itself.
    #[track_caller]
    pub fn ok_counting_writes(
        &self,
        args: &[&str],
        dir: &Path,
    ) -> (String, std::collections::BTreeMap<String, u64>) {
        let cairn = self.command(args);
        let log = self.dir.path().join("strace");
        let mut traced = Command::new("strace");
        traced
            .args(["-f", "-ff", "--seccomp-bpf", "-qq", "-y", "-e"])
            .arg("trace=write,pwrite64,writev,pwritev,pwritev2,copy_file_range,sendfile")
            .arg("-o")
            .arg(&log)
            .arg(cairn.get_program())
            .args(cairn.get_args());
        for (k, v) in cairn.get_envs() {
            match v {
                Some(v) => traced.env(k, v),
                None => traced.env_remove(k),
            };
        }
        let out = traced
            .output()
            .expect("run strace (apt-get install strace)");
        assert!(
            out.status.success(),
            "cairn {args:?} under strace failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = std::fs::canonicalize(dir).expect("canonical dir");
        let mut written = std::collections::BTreeMap::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap() {
            let e = e.unwrap();
            if !e.file_name().to_string_lossy().starts_with("strace.") {
                continue;
            }
            let text = std::fs::read_to_string(e.path()).unwrap();
            for (path, n) in text.lines().filter_map(|l| traced_write(l, &dir)) {
                *written.entry(path).or_insert(0) += n;
            }
            std::fs::remove_file(e.path()).unwrap();
        }
        (String::from_utf8_lossy(&out.stdout).into_owned(), written)
    }

    /// Starts the branch's compute and returns its connection URL.
    #[track_caller]
    /// Starts a compute; its URL logs in as the owner role.
    pub fn start(&self, branch: &str) -> String {
        self.ok(&["compute", "start", branch, "--url-only"])
            .trim()
            .to_string()
    }

    /// Starts a compute and returns a superuser URL (the operator's `--superuser`).
    pub fn start_superuser(&self, branch: &str) -> String {
        self.ok(&["compute", "start", branch, "--url-only", "--superuser"])
            .trim()
            .to_string()
    }

    pub fn branch(&self, name: &str) -> Value {
        self.json(&["branch", "show", name])
    }

    pub fn head(&self, branch: &str) -> String {
        self.branch(branch)["head"]
            .as_str()
            .expect("head")
            .to_string()
    }

    pub fn layers(&self) -> Vec<Value> {
        self.json(&["layer", "list"])
            .as_array()
            .expect("array")
            .clone()
    }

    /// What is left in HOME/export (exports' scratch copies): nothing once they finished.
    pub fn export_leftovers(&self) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(self.home.join("export"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect()
    }

    /// `cairn export decrypt FILE --out OUT`.
    #[track_caller]
    pub fn decrypt_export(&self, file: &Path, out: &Path) {
        self.ok(&[
            "export",
            "decrypt",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
    }

    /// A new, empty appliance (another home) that knows only `region` of this one: the
    /// machine a disaster recovery starts from.
    pub fn disaster_recovery_from(&self, region: &str) -> Env {
        let dr = Env::new();
        dr.write_regions(&format!(
            "min_copies = 1\n[[region]]\nname = \"{region}\"\nurl = \"file://{}\"\n",
            self.dir.path().join("regions").join(region).display()
        ));
        dr
    }

    /// Runs cairn with `failpoint` armed and insists that it was killed there (SIGKILL).
    #[track_caller]
    pub fn killed_at(&self, args: &[&str], failpoint: &str) {
        use std::os::unix::process::ExitStatusExt;
        let out = self
            .command(args)
            .env("CAIRN_FAILPOINT", failpoint)
            .output()
            .expect("run cairn");
        assert_eq!(
            out.status.signal(),
            Some(9),
            "cairn {args:?} was to be killed at {failpoint}:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every layer file of this home: (id, extension `img` or `wal`, path), by id.
    pub fn layer_files(&self) -> Vec<(String, String, PathBuf)> {
        let mut out = Vec::new();
        let mut stack = vec![self.home.join("layers")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if let Some((id, ext)) = name.split_once('.') {
                        out.push((id.to_string(), ext.to_string(), p));
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Two local-directory regions, region-a and region-b, both needed for a copy to count.
    pub fn two_file_regions(&self) {
        self.write_regions(&format!(
            "min_copies = 2\n{}\n{}",
            self.file_region("region-a"),
            self.file_region("region-b")
        ));
    }

    /// Writes HOME/regions.toml (mode 0600).
    pub fn write_regions(&self, toml: &str) {
        std::fs::create_dir_all(&self.home).unwrap();
        let p = self.home.join("regions.toml");
        std::fs::write(&p, toml).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// A `[[region]]` entry for a local directory below the test's directory.
    pub fn file_region(&self, name: &str) -> String {
        format!(
            "[[region]]\nname = \"{name}\"\nurl = \"file://{}\"\n",
            self.dir.path().join("regions").join(name).display()
        )
    }

    /// The root of a file region's objects.
    pub fn region_root(&self, name: &str) -> PathBuf {
        let configured = self.dir.path().join("regions").join(name).join("cairn/v1");
        if configured.exists() {
            configured
        } else {
            self.home.join("regions").join(name).join("cairn/v1")
        }
    }

    /// Every object file of a file region, relative to its root, sorted.
    pub fn region_objects(&self, name: &str) -> Vec<String> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, root, out);
                } else if !e.file_name().to_string_lossy().starts_with('.') {
                    out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        let root = self.region_root(name);
        let mut out = Vec::new();
        walk(&root, &root, &mut out);
        out.sort();
        out
    }

    /// Writes this appliance's recovery kit (once) into the test directory and returns it.
    #[track_caller]
    pub fn recovery_kit(&self) -> PathBuf {
        let kit = self.dir.path().join("recovery.kit");
        if !kit.exists() {
            self.ok(&["key", "export-recovery-kit", "--out", kit.to_str().unwrap()]);
        }
        kit
    }

    /// Starts `cairn up` on a port the system picks (`--listen 127.0.0.1:0`, so that no other
    /// test can take it meanwhile) with `extra` arguments; returns it and its API port.
    pub fn spawn_up(&self, extra: &[&str]) -> (std::process::Child, u16) {
        use std::io::BufRead;
        let mut args = vec!["up", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut up = self
            .command(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start cairn up");
        let mut lines = std::io::BufReader::new(up.stderr.take().expect("stderr")).lines();
        let mut seen = Vec::new();
        let port = loop {
            let Some(line) = lines.next() else {
                panic!("cairn up ended before it was up:\n{}", seen.join("\n"));
            };
            let line = line.expect("read cairn up's log");
            if let Some(rest) = line.split("API on http://127.0.0.1:").nth(1) {
                break rest
                    .split('/')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                    .expect("a port");
            }
            seen.push(line);
        };
        // Keep draining its log so that it never blocks on a full pipe, into `up.log` beside
        // the home (read it when a slow test fails).
        let log = self.dir.path().join("up.log");
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .ok();
            for l in seen.into_iter().chain(lines.map_while(|l| l.ok())) {
                if let Some(f) = f.as_mut() {
                    let _ = writeln!(f, "{l}");
                }
            }
        });
        (up, port)
    }

    /// Stops every compute this test left running.
    pub fn stop_all(&self) {
        let list = self.run(&["compute", "list", "--json"]);
        if let Ok(v) = serde_json::from_slice::<Value>(&list.stdout) {
            for c in v.as_array().into_iter().flatten() {
                // A stop that fails to take its compute's last WAL would hide a loss from the
                // test that comes next (often a backup): it fails the test.
                let branch = c["branch"].as_str().unwrap_or_default();
                let out = self
                    .command(&[
                        "compute",
                        "stop",
                        branch,
                        "--cluster",
                        c["cluster"].as_str().unwrap_or_default(),
                    ])
                    .output()
                    .expect("run cairn compute stop");
                assert!(
                    out.status.success(),
                    "stopping the compute of {branch} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Make sure no PostgreSQL outlives the test, whatever happened.
        for dir in std::fs::read_dir(self.home.join("computes"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let datadir = dir.path().join("pgdata");
            if datadir.join("postmaster.pid").exists() {
                let _ = pg_command("pg_ctl")
                    .arg("stop")
                    .arg("-D")
                    .arg(&datadir)
                    .args(["-m", "immediate", "-w"])
                    .output();
            }
        }
    }
}

/// The PostgreSQL binary directory the tests use.
pub fn pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CAIRN_PG_BIN") {
        return PathBuf::from(p);
    }
    let out = Command::new("pg_config").arg("--bindir").output();
    if let Ok(o) = out {
        if o.status.success() {
            return PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        }
    }
    PathBuf::from("/usr/lib/postgresql/15/bin")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A PostgreSQL program, run as the postgres OS user when the tests run as root.
pub fn pg_command(program: &str) -> Command {
    let path = pg_bin().join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

pub fn chown_postgres(p: &Path) {
    if is_root() {
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(p)
            .status()
            .expect("chown");
        assert!(st.success());
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect: {e:?}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// An order-independent checksum of a whole table's contents.
pub async fn table_checksum(c: &tokio_postgres::Client, table: &str) -> String {
    let sql = format!(
        "SELECT count(*)::text || ':' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') FROM {table} x"
    );
    c.query_one(&sql, &[]).await.expect("checksum").get(0)
}

pub async fn scalar(c: &tokio_postgres::Client, sql: &str) -> String {
    let row = c
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.get::<_, String>(0)
}

/// A free TCP port on 127.0.0.1.
/// A port of 127.0.0.1 that was free a moment ago. Another process may take it before the
/// caller binds it: callers that start a server retry on "address in use" ([`Plain`]), and
/// those that can let the server choose do so ([`Env::spawn_up`]).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free ports (all held at once while they are chosen, so none comes twice).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// How long one cairn command may run in a test: `CAIRN_TEST_COMMAND_TIMEOUT` seconds, 600 by
/// default (the slowest command of the suite takes well under a minute here).
pub fn command_timeout() -> std::time::Duration {
    let secs = std::env::var("CAIRN_TEST_COMMAND_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    std::time::Duration::from_secs(secs)
}

/// The file below `dir` (relative path) and the bytes one `strace -y` line says a write
/// system call put into it. `copy_file_range` writes to its second descriptor, the others to
/// their first.
fn traced_write(line: &str, dir: &Path) -> Option<(String, u64)> {
    let (call, rest) = line.split_once('(')?;
    let nth = usize::from(call == "copy_file_range");
    let mut fds = rest.split('<').skip(1);
    let path = fds.nth(nth)?.split_once('>')?.0;
    let n: i64 = line
        .rsplit_once(") = ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let rel = Path::new(path).strip_prefix(dir).ok()?;
    (n > 0).then(|| (rel.to_string_lossy().into_owned(), n as u64))
}

/// Runs `sql` with psql on `url` (stopping at the first error): its output, unaligned, without
/// headers and trimmed, or psql's error.
pub fn try_psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(pg_bin().join("psql"))
        .args([url, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// [`try_psql`], failing the test on an error.
#[track_caller]
pub fn psql(url: &str, sql: &str) -> String {
    try_psql(url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Polls `f` every 200 ms until it returns `Some`, failing the test after `secs` seconds.
#[track_caller]
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The password in a compute URL.
/// The login of a compute URL (`user:password`), to log into a restored copy of it.
pub fn login_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    rest.rsplit_once('@').unwrap().0.to_string()
}

/// A seeded random source for a test that kills processes at random moments: the seed is
/// `CAIRN_TEST_SEED` when set, else drawn, and printed either way so that a failure can be
/// replayed.
pub fn seeded_rng(test: &str) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let seed = std::env::var("CAIRN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: CAIRN_TEST_SEED={seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Sends SIGKILL to `child` after `delay` and reaps it; true when the signal ended it, false
/// when it had already finished on its own.
pub fn kill_after(child: &mut std::process::Child, delay: std::time::Duration) -> bool {
    use std::os::unix::process::ExitStatusExt;
    std::thread::sleep(delay);
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let status = child.wait().expect("reap the child");
    status.signal() == Some(9)
}

/// A child process (`cairn up`) stopped with SIGTERM when dropped: a failing test leaves no
/// daemon behind.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(self.0.id() as i32, libc::SIGTERM);
            }
            let _ = self.0.wait();
        }
    }
}

/// The port in a compute URL.
pub fn port_of(url: &str) -> u16 {
    url.rsplit_once(':')
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Dump text without its `\restrict` / `\unrestrict` lines: their keys are random per run by
/// design (psql meta-command protection), the only lines two dumps of the same data differ in.
pub fn strip_restrict(dump: &str) -> String {
    dump.lines()
        .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The check `name` of a verification report (JSON).
pub fn report_check<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["checks"]
        .as_array()
        .expect("a report's checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {r:#}"))
}

/// The names of a verification report's checks, in order.
pub fn report_check_names(r: &Value) -> Vec<&str> {
    r["checks"]
        .as_array()
        .expect("a report's checks")
        .iter()
        .map(|c| c["name"].as_str().expect("a check's name"))
        .collect()
}
