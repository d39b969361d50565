//! Issue 12: the systemd units in `scripts/systemd/` pass `systemd-analyze
//! verify`, and a node tells a `Type=notify` supervisor when it serves
//! (`READY=1` on `NOTIFY_SOCKET`).

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

#[test]
fn the_service_units_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed (Debian: systemd)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let units = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/systemd");
    for role in ["storage", "sequencer", "consensus"] {
        let text = std::fs::read_to_string(format!("{units}/trex-{role}@.service")).unwrap();
        assert!(text.contains("Type=notify") && text.contains("LimitNOFILE="));
        // The binary as the test built it (verify checks that it exists).
        let text = text.replace("/usr/local/bin/trex", env!("CARGO_BIN_EXE_trex"));
        let path = dir.path().join(format!("trex-{role}@test.service"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "trex-{role}@.service does not verify: {err}"
        );
        // Warnings about this file (not about the host's other units).
        let mine: Vec<&str> = err
            .lines()
            .filter(|l| l.contains(&format!("trex-{role}@")))
            .collect();
        assert!(mine.is_empty(), "trex-{role}@.service: {mine:?}");
    }
}

#[test]
fn a_node_notifies_its_supervisor_when_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let port = common::free_port();
    let mut unit = Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(["node", "storage", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let got = sock.recv(&mut buf);
    let ready = got.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
    // Ready means it listens: a client connects at once.
    let listens = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    let _ = unit.kill();
    let _ = unit.wait();
    let ready = ready.expect("no notification within 20 s");
    assert!(ready.starts_with("READY=1"), "{ready:?}");
    assert!(ready.contains("STATUS="), "{ready:?}");
    assert!(listens, "READY=1 came before the unit listened");
}
