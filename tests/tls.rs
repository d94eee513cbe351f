//! Cairn's own PostgreSQL connections across a network that may be hostile: an adopted source
//! and a PostgreSQL catalog behind TLS with certificates from a test CA. `verify-full` works,
//! a wrong CA or a wrong host name is refused, and a server that asks for a cleartext password
//! on a connection without TLS gets no password.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME.pem`, `NAME.key`) in `dir`.
fn ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    dir.join(format!("{name}.pem"))
}

/// A server certificate for host name `localhost` only, signed by CA `ca`, in `datadir`.
fn server_cert(dir: &Path, ca: &str, datadir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(dir.join("ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    );
    for f in ["server.crt", "server.key"] {
        std::fs::copy(dir.join(f), datadir.join(f)).unwrap();
        std::fs::set_permissions(
            datadir.join(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }
}

/// A PostgreSQL server started by hand, with the given pg_hba.conf, TLS on or off.
struct Pg {
    datadir: PathBuf,
    port: u16,
}

impl Pg {
    fn start(dir: &Path, hba: &str, tls_ca: Option<(&Path, &str)>) -> Pg {
        std::fs::create_dir_all(dir).unwrap();
        let datadir = dir.join("data");
        std::fs::create_dir_all(&datadir).unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "supersecret").unwrap();
        chown_postgres(dir);
        let out = pg_command("initdb")
            .arg("-D")
            .arg(&datadir)
            .args(["-U", "postgres", "--auth=scram-sha-256"])
            .arg(format!("--pwfile={}", pw.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(datadir.join("pg_hba.conf"), hba).unwrap();
        let mut opts = "-c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
                        -c wal_level=replica -c max_wal_senders=5"
            .to_string();
        if let Some((pki, ca)) = tls_ca {
            server_cert(pki, ca, &datadir);
            opts.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
        chown_postgres(dir);
        let port = pg_ctl_start(&datadir, &dir.join("server.log"), &opts);
        Pg { datadir, port }
    }

    /// The superuser over a plain connection (the hba rules let it in), for the test's setup.
    async fn admin(&self) -> tokio_postgres::Client {
        connect(&format!(
            "postgresql://postgres:supersecret@127.0.0.1:{}/postgres",
            self.port
        ))
        .await
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = pg_command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.datadir)
            .args(["-m", "immediate"])
            .output();
    }
}

/// Role `cairn` may only come in over TLS; the superuser over anything (test setup).
const TLS_ONLY_FOR_CAIRN: &str = "hostnossl all cairn 127.0.0.1/32 reject\n\
    hostnossl replication cairn 127.0.0.1/32 reject\n\
    host all all 127.0.0.1/32 scram-sha-256\n\
    host replication cairn 127.0.0.1/32 scram-sha-256\n";

#[tokio::test(flavor = "multi_thread")]
async fn an_adopted_source_behind_tls_is_verified_and_never_gets_a_cleartext_password() {
    let mut env = Env::new();
    let pki = env.dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let good_ca = ca(&pki, "test-ca");
    let wrong_ca = ca(&pki, "other-ca");
    let src = Pg::start(
        &env.dir.path().join("source"),
        TLS_ONLY_FOR_CAIRN,
        Some((&pki, "test-ca")),
    );
    src.admin()
        .await
        .batch_execute(
            "CREATE ROLE cairn LOGIN REPLICATION PASSWORD 'repl pw';
             CREATE TABLE items AS SELECT g AS id, 'item ' || g AS name FROM generate_series(1, 3000) g;",
        )
        .await
        .unwrap();
    env.extra_env
        .push(("CAIRN_SOURCE_PASSWORD".into(), "repl pw".into()));
    let url = |host: &str, mode: &str, ca: &Path| {
        format!(
            "postgresql://cairn@{host}:{}/postgres?sslmode={mode}&sslrootcert={}",
            src.port,
            ca.display()
        )
    };
    // A certificate from another CA, or for another name than the one connected to: refused.
    let err = env.fail(&[
        "cluster",
        "adopt",
        "erp",
        "--from",
        &url("localhost", "verify-full", &wrong_ca),
    ]);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let err = env.fail(&[
        "cluster",
        "adopt",
        "erp",
        "--from",
        &url("127.0.0.1", "verify-full", &good_ca),
    ]);
    assert!(
        err.contains("NotValidForName") || err.contains("not valid for"),
        "{err}"
    );
    assert_eq!(env.json(&["cluster", "list"]), serde_json::json!([]));
    // Without TLS the source refuses the role (its hba says so), and Cairn says why.
    let plain = format!(
        "postgresql://cairn@127.0.0.1:{}/postgres?sslmode=disable",
        src.port
    );
    let err = env.fail(&["cluster", "adopt", "erp", "--from", &plain]);
    assert!(
        err.contains("no encryption") || err.contains("pg_hba"),
        "{err}"
    );

    // verify-full with the right CA and name: adopted, and the WAL keeps flowing over TLS.
    let good = url("localhost", "verify-full", &good_ca);
    let out = env.ok(&["cluster", "adopt", "erp", "--from", &good]);
    assert!(out.contains("adopted 'erp'"), "{out}");
    let list = env.json(&["cluster", "list"]);
    assert!(list.to_string().contains("sslmode=verify-full"), "{list}");
    assert!(!list.to_string().contains("repl pw"), "{list}");
    src.admin()
        .await
        .batch_execute("INSERT INTO items VALUES (-1, 'after adoption')")
        .await
        .unwrap();
    // (The source's hba rejects role cairn without TLS: the base backup and this WAL came
    // over verified TLS, through pg_basebackup and pg_receivewal as well.)
    env.ok(&["cluster", "sync", "erp"]);
    env.ok(&[
        "branch",
        "create",
        "snap",
        "--from",
        "main",
        "--cluster",
        "erp",
    ]);

    // A server that asks for a cleartext password on a plain connection gets none.
    let clear = Pg::start(
        &env.dir.path().join("cleartext"),
        "host all postgres 127.0.0.1/32 scram-sha-256\n\
         host all all 127.0.0.1/32 password\n\
         host replication all 127.0.0.1/32 password\n",
        None,
    );
    clear
        .admin()
        .await
        .batch_execute("CREATE ROLE cairn LOGIN REPLICATION PASSWORD 'repl pw'")
        .await
        .unwrap();
    let err = env.fail(&[
        "cluster",
        "adopt",
        "leaky",
        "--from",
        &format!("postgresql://cairn@127.0.0.1:{}/postgres", clear.port),
    ]);
    assert!(err.contains("cleartext"), "{err}");
    let log = std::fs::read_to_string(env.dir.path().join("cleartext/server.log")).unwrap();
    assert!(
        !log.contains("connection authorized: user=cairn"),
        "the role never got in: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgresql_catalog_behind_tls_is_verified() {
    let mut env = Env::new();
    let pki = env.dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let good_ca = ca(&pki, "test-ca");
    let wrong_ca = ca(&pki, "other-ca");
    let cat = Pg::start(
        &env.dir.path().join("catalog"),
        "hostnossl all all 127.0.0.1/32 reject\nhost all all 127.0.0.1/32 scram-sha-256\n",
        Some((&pki, "test-ca")),
    );
    let url = |host: &str, ca: &Path| {
        format!(
            "postgresql://postgres:supersecret@{host}:{}/postgres?sslmode=verify-full&sslrootcert={}",
            cat.port,
            ca.display()
        )
    };
    for (bad, why) in [
        (url("localhost", &wrong_ca), "certificate"),
        (url("127.0.0.1", &good_ca), "name"),
    ] {
        let out = env
            .command(&["cluster", "list"])
            .env("CAIRN_CATALOG", &bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("cannot open catalog") && err.to_lowercase().contains(why),
            "{why}: {err}"
        );
        assert!(!err.contains("supersecret"), "{err}");
    }
    env.extra_env
        .push(("CAIRN_CATALOG".into(), url("localhost", &good_ca)));
    env.ok(&["cluster", "create", "shop"]);
    assert_eq!(env.json(&["cluster", "list"])[0]["name"], "shop");
    assert!(!env.home.join("catalog.db").exists());
    // Every connection the catalog server saw from Cairn was encrypted.
    let plain = scalar(
        &cat.admin_tls(&good_ca).await,
        "SELECT count(*)::text FROM pg_stat_ssl WHERE NOT ssl AND pid <> pg_backend_pid() \
         AND pid IN (SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend')",
    )
    .await;
    assert_eq!(plain, "0");
}

impl Pg {
    /// The superuser over TLS (for a server whose hba rejects plain connections).
    async fn admin_tls(&self, ca: &Path) -> tokio_postgres::Client {
        let url = format!(
            "postgresql://postgres:supersecret@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
            self.port,
            ca.display()
        );
        let u = cairn_engine::pg::url::PgUrl::parse(&url).unwrap();
        let (cfg, policy) = u.config().unwrap();
        let (host, port) = u.host_port().unwrap();
        cairn_engine::pg::tls::connect(cfg, &host, port, &policy, "catalog")
            .await
            .unwrap()
    }
}
