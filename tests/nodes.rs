//! Two `cairn up` nodes on one PostgreSQL catalog and one home: one is active and runs every
//! scheduled job, the other waits as a standby; when the active node stops answering (frozen),
//! the standby takes the role once its lease passed, adopts the running compute and runs the
//! next fires; the old node, woken, stands by without touching the compute. Every fire has
//! exactly one successful run.

mod common;

use std::collections::BTreeMap;

use cairn_engine::pg::scratch::ScratchServer;
use common::*;
use serde_json::Value;

fn health(port: u16) -> Option<Value> {
    api(port, "/api/health")
}

fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_standby_takes_over_the_jobs_of_an_active_node_that_stops_answering() {
    let mut env = Env::new();
    let catalog = ScratchServer::start(&env.dir.path().join("catalog-server"), &[])
        .expect("start the catalog server");
    env.extra_env
        .push(("CAIRN_CATALOG".into(), catalog.url("postgres")));
    env.two_file_regions();
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let c = connect(&url).await;
    c.batch_execute("CREATE TABLE t (g int)").await.unwrap();
    // An image every minute, at a second 20 s from now.
    let second = (chrono::Utc::now().timestamp() + 20) % 60;
    let dir = env.home.join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("shop.toml"),
        format!(
            "clusters = [\"shop\"]\n[objectives]\nrpo = \"1m\"\nrto = \"1h\"\n\
             [schedules]\nimage = \"{second} * * * * *\"\n[retention]\npitr = \"1d\"\n\
             [regions]\nuse = [\"region-a\", \"region-b\"]\nmin_copies = 1\n"
        ),
    )
    .unwrap();
    env.ok(&["policy", "apply", "--by", "alice"]);

    let (a, port_a) = env.spawn_up(&[]);
    let mut a = KillOnDrop(a);
    let (b, port_b) = env.spawn_up(&[]);
    let _b = KillOnDrop(b);
    let ha = wait_for("node a active", 30, || {
        health(port_a).filter(|h| h["role"] == "active")
    });
    let node_a = ha["node"].as_str().unwrap().to_string();
    let hb = wait_for("node b standby", 30, || {
        health(port_b).filter(|h| h["active_node"]["node"] == node_a.as_str())
    });
    assert_eq!(hb["role"], "standby", "{hb}");
    let node_b = hb["node"].as_str().unwrap().to_string();

    // Every commit gets a row; the first fire runs on a.
    c.batch_execute("INSERT INTO t SELECT generate_series(1, 100)")
        .await
        .unwrap();
    let first = wait_for("the first fire's run", 90, || {
        let runs = api(port_b, "/api/jobs")?;
        runs.as_array()?
            .iter()
            .find(|r| r["outcome"] == "succeeded")
            .cloned()
    });
    assert_eq!(first["node"], node_a.as_str(), "{first}");

    // a freezes: it neither renews its lease nor answers. b takes the role once the lease
    // passed (30 s), not before.
    signal(&a.0, libc::SIGSTOP);
    let frozen = std::time::Instant::now();
    let hb = wait_for("node b active", 60, || {
        health(port_b).filter(|h| h["role"] == "active")
    });
    let took = frozen.elapsed().as_secs_f64();
    println!("standby took over {took:.1}s after the active node froze: {hb}");
    // The lease is renewed every 5 s and holds 30 s.
    assert!(
        took >= 24.0,
        "took over after {took}s, before the lease could pass"
    );

    // a wakes up: it finds the role taken and stands by, leaving the compute to b.
    signal(&a.0, libc::SIGCONT);
    let ha = wait_for("node a standby", 30, || {
        health(port_a).filter(|h| h["role"] == "standby")
    });
    assert_eq!(ha["active_node"]["node"], node_b.as_str(), "{ha}");

    // b adopted the running compute and stores its WAL.
    c.batch_execute("INSERT INTO t SELECT generate_series(101, 200)")
        .await
        .unwrap();
    wait_for("b to store the new WAL", 60, || {
        let e = api(port_b, "/api/objectives")?["rpo"][0]["exposure_seconds"].as_f64()?;
        (e < 15.0).then_some(())
    });

    // The next fire runs on b.
    let second_run = wait_for("the next fire's run on b", 90, || {
        let runs = api(port_b, "/api/jobs")?;
        runs.as_array()?
            .iter()
            .find(|r| r["outcome"] == "succeeded" && r["fire_at_us"] != first["fire_at_us"])
            .cloned()
    });
    assert_eq!(second_run["node"], node_b.as_str(), "{second_run}");
    // The compute was never stopped under b: the same session still works.
    assert_eq!(scalar(&c, "SELECT count(*)::text FROM t").await, "200");
    signal(&a.0, libc::SIGKILL);
    let _ = a.0.wait();

    // Every fire has exactly one successful run, and only image runs of this policy exist.
    let runs = env.json(&["jobs", "--cluster", "shop", "--limit", "100"]);
    let mut per_fire: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for r in runs.as_array().unwrap() {
        if r["outcome"] == "succeeded" {
            per_fire
                .entry(r["fire_at_us"].as_i64().unwrap())
                .or_default()
                .push(r["node"].as_str().unwrap().to_string());
        }
    }
    assert!(per_fire.len() >= 2, "{runs}");
    for (fire, nodes) in &per_fire {
        assert_eq!(nodes.len(), 1, "fire {fire} ran on {nodes:?}: {runs}");
    }
    // The rows committed after the takeover are in what b stored: a branch at the head has them.
    let head = env.head("main");
    env.ok(&["branch", "create", "after", "--from", "main", "--at", &head]);
    let after = connect(&env.start("after")).await;
    assert_eq!(scalar(&after, "SELECT count(*)::text FROM t").await, "200");
    drop((after, c));
    drop(_b);
    env.stop_all();
}

/// The postmaster of the server whose data directory is `datadir`, and all its children.
fn server_processes(datadir: &std::path::Path) -> Vec<i32> {
    let pid: i32 = std::fs::read_to_string(datadir.join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let children = std::process::Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .unwrap();
    std::iter::once(pid)
        .chain(
            String::from_utf8_lossy(&children.stdout)
                .lines()
                .filter_map(|l| l.trim().parse().ok()),
        )
        .collect()
}

/// Processes stopped with SIGSTOP, continued when dropped (also when the test fails).
struct Frozen(Vec<i32>);

impl Frozen {
    fn freeze(pids: Vec<i32>) -> Frozen {
        for pid in &pids {
            // SAFETY: signalling the test's own catalog server.
            unsafe {
                libc::kill(*pid, libc::SIGSTOP);
            }
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.0 {
            // SAFETY: as in `freeze`.
            unsafe {
                libc::kill(*pid, libc::SIGCONT);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_active_node_that_loses_the_catalog_halts_its_computes_and_resumes_after() {
    let mut env = Env::new();
    let catalog_dir = env.dir.path().join("catalog-server");
    let catalog = ScratchServer::start(&catalog_dir, &[]).expect("start the catalog server");
    env.extra_env
        .push(("CAIRN_CATALOG".into(), catalog.url("postgres")));
    env.two_file_regions();
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let c = connect(&url).await;
    c.batch_execute("CREATE TABLE t AS SELECT generate_series(1, 100) g")
        .await
        .unwrap();
    drop(c);
    let (a, port) = env.spawn_up(&[]);
    let _a = KillOnDrop(a);
    wait_for("node a active", 30, || {
        health(port).filter(|h| h["role"] == "active")
    });
    // Let a round see the compute.
    std::thread::sleep(std::time::Duration::from_secs(3));

    // The catalog stops answering (its processes frozen): within half a lease (plus a renewal
    // and its timeout) the node halts the compute, before any other node could take over.
    let frozen = Frozen::freeze(server_processes(&catalog_dir.join("data")));
    let t = std::time::Instant::now();
    let compute_port = port_of(&url);
    wait_for("the compute to be halted", 40, || {
        std::net::TcpStream::connect(("127.0.0.1", compute_port))
            .is_err()
            .then_some(())
    });
    let halted = t.elapsed().as_secs_f64();
    println!("compute halted {halted:.1}s after the catalog stopped answering");
    assert!(
        (10.0..30.0).contains(&halted),
        "halted after {halted}s: the lease holds 30 s"
    );
    let h = health(port).unwrap();
    assert_eq!(h["role"], "standby", "{h}");

    // The catalog is back: the node takes its role again, restarts the compute, and nothing
    // committed before is lost.
    drop(frozen);
    wait_for("node a active again", 60, || {
        health(port).filter(|h| h["role"] == "active")
    });
    wait_for("the compute back", 60, || {
        std::net::TcpStream::connect(("127.0.0.1", compute_port))
            .is_ok()
            .then_some(())
    });
    let c = connect(&url).await;
    assert_eq!(scalar(&c, "SELECT count(*)::text FROM t").await, "100");
    drop(c);
    drop(_a);
    env.stop_all();
}
