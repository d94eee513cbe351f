//! A real S3-compatible server for the tests: Garage, single node, on loopback ports.
//!
//! The binary comes from `CAIRN_GARAGE_BIN`, `$CAIRN_GARAGE_ROOT/bin/garage` (default root
//! `$HOME/.cache/cairn/garage`) or `PATH`. When none has one, the first test that needs it
//! builds it into the root with `tests/support/install-garage` (also what `.ci/run` calls):
//! once per process here, and once per machine through the script's file lock.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::free_ports;

pub struct Garage {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub s3_port: u16,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
    child: Option<Child>,
}

/// The Garage binary, found or built on first use. A failed build fails every test that needs
/// Garage with the same message, without building again.
pub fn binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(find_or_build) {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn find_or_build() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CAIRN_GARAGE_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(format!(
                "CAIRN_GARAGE_BIN={} is not a file: point it at a garage binary, or unset it \
                 to have the tests build one",
                p.display()
            ));
        }
        return Ok(p);
    }
    let root = match std::env::var_os("CAIRN_GARAGE_ROOT") {
        Some(r) => PathBuf::from(r),
        None => match std::env::var_os("HOME") {
            Some(h) => Path::new(&h).join(".cache/cairn/garage"),
            None => {
                return Err(
                    "neither CAIRN_GARAGE_BIN, CAIRN_GARAGE_ROOT nor HOME is set: \
                            the tests cannot find or build Garage"
                        .into(),
                )
            }
        },
    };
    let cached = root.join("bin/garage");
    if cached.is_file() {
        return Ok(cached);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("garage").is_file() {
                return Ok(d.join("garage"));
            }
        }
    }
    build(&root, &cached)
}

/// Runs `tests/support/install-garage ROOT`; it prints why the test waits (the build takes
/// about 10 minutes, once) on stderr, which the test harness does not capture.
fn build(root: &Path, cached: &Path) -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/install-garage");
    let shown = format!("bash {} {}", script.display(), root.display());
    let status = Command::new("bash")
        .arg(&script)
        .arg(root)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("building Garage for the S3 tests: cannot run `{shown}`: {e}"))?;
    if !status.success() || !cached.is_file() {
        return Err(format!(
            "building Garage for the S3 tests failed: `{shown}` ({status}; its output above \
             says why). Fix that and run the command again, or set CAIRN_GARAGE_BIN to a \
             garage binary"
        ));
    }
    Ok(cached.to_path_buf())
}

fn cli(conf: &Path, args: &[&str]) -> String {
    let out = Command::new(binary())
        .arg("-c")
        .arg(conf)
        .args(args)
        .output()
        .expect("run garage");
    assert!(
        out.status.success(),
        "garage {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn field(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(name)
                .map(|v| v.trim().trim_start_matches(':').trim().to_string())
        })
        .unwrap_or_else(|| panic!("garage printed no '{name}': {text}"))
}

impl Garage {
    pub fn start(dir: &Path) -> Garage {
        std::fs::create_dir_all(dir).unwrap();
        let ports = free_ports(3);
        let (rpc, s3, admin) = (ports[0], ports[1], ports[2]);
        let mut secret = [0u8; 32];
        cairn_engine::ids::random_bytes(&mut secret);
        let conf = dir.join("garage.toml");
        std::fs::write(
            &conf,
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\n\
                 replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{}\"\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                 root_domain = \".s3.garage.localhost\"\n[admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
                hex::encode(secret),
                d = dir.display()
            ),
        )
        .unwrap();
        let mut g = Garage {
            dir: dir.to_path_buf(),
            conf,
            s3_port: s3,
            bucket: "cairn".into(),
            key_id: String::new(),
            secret: String::new(),
            child: None,
        };
        g.spawn();
        // Wait for the node, then give it a role, a bucket and a key.
        let deadline = Instant::now() + Duration::from_secs(60);
        let node = loop {
            let out = Command::new(binary())
                .arg("-c")
                .arg(&g.conf)
                .arg("status")
                .output();
            if let Ok(o) = out {
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                if let Some(id) = text
                    .lines()
                    .skip_while(|l| !l.contains("HEALTHY NODES"))
                    .nth(2)
                    .and_then(|l| l.split_whitespace().next())
                {
                    break id.to_string();
                }
            }
            assert!(Instant::now() < deadline, "garage did not come up");
            std::thread::sleep(Duration::from_millis(200));
        };
        cli(
            &g.conf,
            &["layout", "assign", "-z", "dc1", "-c", "1G", &node],
        );
        cli(&g.conf, &["layout", "apply", "--version", "1"]);
        cli(&g.conf, &["bucket", "create", "cairn"]);
        cli(&g.conf, &["key", "create", "cairn-key"]);
        cli(
            &g.conf,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                "cairn",
                "--key",
                "cairn-key",
            ],
        );
        let info = cli(&g.conf, &["key", "info", "cairn-key", "--show-secret"]);
        g.key_id = field(&info, "Key ID");
        g.secret = field(&info, "Secret key");
        g.wait_s3();
        g
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(&self.conf)
            .arg("server")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start garage");
        self.child = Some(child);
    }

    fn wait_s3(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.s3_port)).is_err() {
            assert!(Instant::now() < deadline, "garage's S3 port did not open");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server (a region outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Brings the server back with its data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_s3();
    }

    /// A regions.toml entry for this server, with a 0600 credentials file.
    pub fn region_toml(&self, name: &str, prefix: &str) -> String {
        let creds = self.dir.join(format!("{name}.env"));
        std::fs::write(
            &creds,
            format!(
                "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\n",
                self.key_id, self.secret
            ),
        )
        .unwrap();
        std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        format!(
            "[[region]]\nname = \"{name}\"\nurl = \"s3://{}/{prefix}\"\nendpoint = \"http://127.0.0.1:{}\"\n\
             s3_region = \"garage\"\nallow_http = true\ncredentials_file = \"{}\"\n",
            self.bucket,
            self.s3_port,
            creds.display()
        )
    }
}

impl Garage {
    /// The same region as [`Garage::region_toml`], for a test that talks to it directly
    /// (through cairn's own region client, as anyone holding the credentials could).
    pub fn region_config(&self, name: &str, prefix: &str) -> cairn_backup::region::RegionConfig {
        let toml = self.region_toml(name, prefix);
        let c: cairn_backup::region::RegionsConfig =
            toml::from_str(&toml).expect("a region entry parses");
        c.regions.into_iter().next().expect("one region")
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}
