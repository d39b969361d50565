//! Issue 10, the kind behind case 1: every client path survives one bad unit
//! per chain. On a `trex up` cluster (2 stripes × 2 replicas, no spare) with the
//! failure detector off (`--repair-every 0s`, so the client paths must route
//! around the unit themselves), the tail of stripe 1 is made bad in one way —
//! dead (SIGKILL), hung (SIGSTOP), cut off (nft drops every packet to its port),
//! damaged (a payload byte flipped in each of its records, unit restarted) or
//! full (its filesystem has no room for another segment) — and then every
//! command a user runs is tried as a user would: `check`, `check --fast`,
//! `read` (one address and a range), `tail`, `tail --follow` through holes it
//! must fill, `append`, `trim`, `status` and `repair`. Each must answer
//! correctly from the chain's other replica, within a bound.

use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{append_entries, can_cut, line, trex_cli, Cut};

/// What is wrong with the unit.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bad {
    Dead,
    Hung,
    Cut,
    Damaged,
    Full,
}

/// A SIGSTOPped process, continued on drop.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: a process of our own cluster.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// A tmpfs mounted for one unit's data, unmounted on drop.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Flips one payload byte of each record of entries 1 and 3 in the unit's
/// segment files (`dir`); returns what it flipped, where.
fn damage(dir: &str) -> Vec<String> {
    let mut flipped = Vec::new();
    for f in std::fs::read_dir(dir).unwrap() {
        let p = f.unwrap().path();
        let Ok(mut bytes) = std::fs::read(&p) else {
            continue;
        };
        let mut changed = false;
        for i in [1, 3] {
            let tag = format!("entry-{i}-");
            if let Some(at) = bytes.windows(tag.len()).position(|w| w == tag.as_bytes()) {
                bytes[at + tag.len() + 100] ^= 0x20;
                flipped.push(format!("{tag} in {}", p.display()));
                changed = true;
            }
        }
        if changed {
            std::fs::write(&p, &bytes).unwrap();
        }
    }
    flipped
}

fn every_client_path_survives(bad: Bad) {
    if bad == Bad::Cut && !can_cut() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = common::free_base();
    let victim = base + 23; // the tail of stripe 1 (chains [b20, b21], [b22, b23])
    let _mount = if bad == Bad::Full {
        let small = dir.path().join("unit-4");
        std::fs::create_dir_all(&small).unwrap();
        // One 64 KiB segment and a little more: the next segment does not fit.
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=100k", "tmpfs"])
            .arg(&small)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        Some(Mount(small))
    } else {
        None
    };
    let _cluster = common::trex_up_at(
        dir.path(),
        base,
        &["--repair-every", "0s", "--segment-size", "64KiB"],
    );
    let eps = _cluster.eps.clone();
    append_entries(&eps, 0..6);
    let pattern = format!("storage --listen 127.0.0.1:{victim} ");
    let mut _guards: (Option<Resume>, Option<Cut>, Option<common::Proc>) = (None, None, None);
    match bad {
        Bad::Dead => {
            common::kill(&pattern, libc::SIGKILL);
        }
        Bad::Hung => _guards.0 = Some(Resume(common::kill(&pattern, libc::SIGSTOP))),
        Bad::Cut => _guards.1 = Some(Cut::port(victim).expect("nft works (checked)")),
        Bad::Damaged => {
            let cmdline = common::cmdline_of(&pattern);
            common::kill(&pattern, libc::SIGKILL);
            std::thread::sleep(Duration::from_millis(300));
            let data = dir.path().join("unit-4");
            let flipped = damage(data.to_str().unwrap());
            assert_eq!(
                flipped.len(),
                2,
                "entries 1 and 3 damaged once: {flipped:?}"
            );
            _guards.2 = Some(common::restart(&cmdline));
            let t0 = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", victim)).is_err() {
                assert!(t0.elapsed() < Duration::from_secs(20), "no restart");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Bad::Full => {
            // Stripe 1 takes entries 7, 9, …: its tail's segment fills and the
            // next does not fit. The append path may take the full unit out.
            append_entries(&eps, 6..30);
            let (code, out, err) = trex_cli(&eps, &["status"], Duration::from_secs(20));
            assert_eq!(code, Some(0), "status: {err}");
            let row = out
                .lines()
                .find(|l| l.contains(&format!("127.0.0.1:{victim}")))
                .unwrap_or_else(|| panic!("no row for the full unit: {out}"));
            assert!(row.contains("full"), "the unit ran full: {row}");
        }
    }
    let n = if bad == Bad::Full { 30 } else { 6 };
    let within = Duration::from_secs(40);
    let all: Vec<String> = (0..n).map(|i| line(i, i)).collect();

    let (code, out, err) = trex_cli(&eps, &["check"], within);
    assert_eq!(
        (code, out.trim()),
        (Some(0), &*n.to_string()),
        "{bad:?}: check: {err}"
    );
    let (code, out, err) = trex_cli(&eps, &["check", "--fast"], within);
    assert_eq!(
        (code, out.trim()),
        (Some(0), &*n.to_string()),
        "{bad:?}: check --fast: {err}"
    );

    let (code, out, err) = trex_cli(&eps, &["read", "3"], within);
    assert_eq!(code, Some(0), "{bad:?}: read 3: {err}");
    assert_eq!(out.trim_end(), line(3, 3), "{bad:?}: read 3: {err}");
    let (code, out, err) = trex_cli(&eps, &["read", "0", "--count", &n.to_string()], within);
    assert_eq!(code, Some(0), "{bad:?}: read range: {err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        all,
        "{bad:?}: read range: {err}"
    );
    let (code, out, err) = trex_cli(&eps, &["tail"], within);
    assert_eq!(code, Some(0), "{bad:?}: tail: {err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), all, "{bad:?}: tail: {err}");

    let (code, out, err) = trex_cli(&eps, &["status"], within);
    assert_eq!(code, Some(0), "{bad:?}: status: {err}");
    assert!(
        out.contains(&format!("127.0.0.1:{victim}")),
        "{bad:?}: status: {out}"
    );

    // A follower from 0: the entries, then two holes of a writer that died
    // after taking its addresses (stripes 0 and 1: one is the bad unit's
    // chain, which the fill must get past), then a new entry.
    let follow = common::Follower::start(&eps);
    let (_, first) = trex_log::Log::connect(&eps).unwrap().token(2).unwrap();
    assert_eq!(first, n as u64, "{bad:?}: the dead writer's addresses");
    let (code, out, err) = trex_cli(&eps, &["append", "after-the-holes"], within);
    assert_eq!(code, Some(0), "{bad:?}: append: {err}");
    assert_eq!(out.trim(), (n + 2).to_string(), "{bad:?}: append");
    let seen = follow.lines_until(within, |l| l.len() >= n + 3);
    let follow_err = follow.stop();
    let mut want = all.clone();
    want.push(format!("{n}\t(hole)"));
    want.push(format!("{}\t(hole)", n + 1));
    want.push(format!("{}\tafter-the-holes", n + 2));
    assert_eq!(seen, want, "{bad:?}: tail --follow: {follow_err}");

    let (code, out, err) = trex_cli(&eps, &["trim", "2"], within);
    assert_eq!(code, Some(0), "{bad:?}: trim: {err}");
    assert_eq!(out.trim(), "trimmed below 2", "{bad:?}: trim");
    let (code, out, err) = trex_cli(&eps, &["read", "0", "--count", "3"], within);
    assert_eq!(code, Some(0), "{bad:?}: read after trim: {err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "0\t(trimmed)".to_string(),
            "1\t(trimmed)".into(),
            line(2, 2)
        ],
        "{bad:?}: read after trim: {err}"
    );

    // No spare: repair restores nothing, but says so and changes no data.
    let (code, out, err) = trex_cli(&eps, &["repair"], within);
    assert!(
        code == Some(0) || (code == Some(1) && err.contains("spare")),
        "{bad:?}: repair: {code:?} {out} {err}"
    );
    let (code, out, err) = trex_cli(&eps, &["read", "2", "--count", "4"], within);
    assert_eq!(code, Some(0), "{bad:?}: read after repair: {err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        (2..6).map(|i| line(i, i)).collect::<Vec<_>>(),
        "{bad:?}: read after repair"
    );
}

#[test]
fn every_client_path_survives_a_dead_unit() {
    every_client_path_survives(Bad::Dead);
}

#[test]
fn every_client_path_survives_a_hung_unit() {
    every_client_path_survives(Bad::Hung);
}

#[test]
fn every_client_path_survives_a_cut_off_unit() {
    every_client_path_survives(Bad::Cut);
}

#[test]
fn every_client_path_survives_a_damaged_unit() {
    every_client_path_survives(Bad::Damaged);
}

#[test]
fn every_client_path_survives_a_full_unit() {
    every_client_path_survives(Bad::Full);
}
