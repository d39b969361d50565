//! Issue 12: a cluster started the way docs/deploy.md says, from one config
//! file per node (`trex node ROLE --config FILE`), on loopback: three
//! consensus nodes, two storage units, a sequencer; the first layout; appends
//! and reads. A flag on the command line and a `TREX_*` variable override the
//! file.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::trex_cli;

/// A node started from its config file, killed on drop.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(role: &str, config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Node {
    Node(
        Command::new(env!("CARGO_BIN_EXE_trex"))
            .args(["node", role, "--config"])
            .arg(config)
            .args(extra)
            .envs(env.iter().copied())
            .env_remove("TREX_ENDPOINTS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn wait_port(port: u16) {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_cluster_runs_from_its_config_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = common::free_base();
    let c: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect();
    let peers = format!("[\"{}\"]", c.join("\", \""));
    let eps = c.join(",");
    let mut nodes = Vec::new();
    for (i, addr) in c.iter().enumerate() {
        let f = d.join(format!("consensus-{}.toml", i + 1));
        std::fs::write(
            &f,
            format!(
                "# consensus node {n}\nid = {n}\nlisten = \"{addr}\"\npeers = {peers}\ndata_dir = \"{}\"\ncluster-id = 7\n",
                d.join(format!("c{}", i + 1)).display(),
                n = i + 1
            ),
        )
        .unwrap();
        nodes.push(start("consensus", &f, &[], &[]));
    }
    for i in 0..3 {
        wait_port(base + i);
    }
    for u in 0..2u16 {
        let f = d.join(format!("unit-{u}.toml"));
        std::fs::write(
            &f,
            format!(
                "listen = \"127.0.0.1:{}\"\ndata-dir = \"{}\"\nendpoints = \"{eps}\"\nid = {}\nsegment-size = \"1MiB\"\ncluster_id = 7\n",
                base + 20 + u,
                d.join(format!("u{u}")).display(),
                100 + u
            ),
        )
        .unwrap();
        nodes.push(start("storage", &f, &[], &[]));
    }
    // The sequencer's file names a wrong cluster id and port: the flag and the
    // variable override them.
    let f = d.join("sequencer.toml");
    std::fs::write(
        &f,
        format!(
            "listen = \"127.0.0.1:1\"\nendpoints = \"{eps}\"\nid = 50\ncluster-id = 99\nttl = \"3s\"\n"
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", base + 10);
    nodes.push(start(
        "sequencer",
        &f,
        &["--listen", &listen],
        &[("TREX_CLUSTER_ID", "7")],
    ));
    wait_port(base + 10);
    let within = Duration::from_secs(30);
    let env7 = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--cluster-id", "7"]);
        trex_cli(&eps, &all, within)
    };
    let t0 = Instant::now();
    loop {
        let (code, _, err) = env7(&["layout", "init", "--stripes", "1", "--replicas", "2"]);
        if code == Some(0) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "layout init: {err}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let t0 = Instant::now();
    loop {
        let (code, out, err) = env7(&["append", "from-config"]);
        if code == Some(0) {
            assert_eq!(out.trim(), "0");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "append: {err}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (code, out, err) = env7(&["read", "0"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "0\tfrom-config\n");
    let (_, members, _) = env7(&["members"]);
    assert!(
        members.contains("100 ") && members.contains("101 "),
        "{members}"
    );
    assert!(
        members.contains(&listen),
        "the flag overrode the file: {members}"
    );
    // A key that is no flag is refused like an unknown flag.
    std::fs::write(d.join("bad.toml"), "no-such-flag = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(["node", "storage", "--config"])
        .arg(d.join("bad.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-flag"));
    drop(nodes);
}
