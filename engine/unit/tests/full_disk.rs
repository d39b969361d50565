//! A unit whose disk is really full (a small tmpfs: `fallocate` of a new
//! segment fails with ENOSPC) on the real segment store. Root only; skipped
//! with a message elsewhere.

mod common;

use common::{error_code, replies, send, sync};
use std::path::Path;
use std::process::Command;
use trex_unit::storage::mmap::{MmapOptions, MmapStore};
use trex_unit::unit::{Reply, Unit, UnitConfig};
use trex_wire::{self as wire, Opcode, Status};

const SEGMENT: u64 = 64 * 1024;

fn open(dir: &Path) -> Unit<MmapStore> {
    let store = MmapStore::open(
        dir,
        &MmapOptions {
            segment_size: SEGMENT,
        },
    )
    .expect("open");
    Unit::open(store, UnitConfig::default()).expect("recover").0
}

/// A tmpfs of `size` mounted at a fresh directory, unmounted on drop.
/// One at a time: `mount` and `umount` are child processes, and a child
/// forked while the other test reopens its unit holds a copy of the data
/// directory's lock (`flock`) until it execs, so the reopen found the
/// directory "in use by another process" (1 run in ~20).
struct SmallDisk {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    _serial: std::sync::MutexGuard<'static, ()>,
}

static ONE_DISK_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let serial = ONE_DISK_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir_all(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk {
            _dir: dir,
            path,
            _serial: serial,
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn one_reply(u: &mut Unit<MmapStore>) -> Reply {
    sync(u);
    let mut r = replies(u);
    assert_eq!(r.len(), 1, "one reply once durable");
    r.remove(0)
}

fn write_status(u: &mut Unit<MmapStore>, id: u64, epoch: u64, addr: u64, data: &[u8]) -> Status {
    let op = wire::WriteOp {
        addr,
        writer: 1,
        seq: addr,
        data,
    };
    send(u, id, Opcode::Write, epoch, |b| {
        wire::encode_write_request(b, &[op])
    });
    let r = one_reply(u);
    assert_eq!(error_code(&r), None, "write answered");
    let f = wire::parse_frame(&r.frame).unwrap().unwrap();
    let st = wire::decode_status_list(f.body).unwrap().iter().next();
    st.unwrap()
}

fn seal(u: &mut Unit<MmapStore>, id: u64, epoch: u64) -> Result<wire::SealReply, String> {
    send(u, id, Opcode::Seal, 0, |b| wire::encode_u64(b, epoch));
    let r = one_reply(u);
    if let Some(code) = error_code(&r) {
        return Err(format!("{code:?}"));
    }
    let f = wire::parse_frame(&r.frame).unwrap().unwrap();
    Ok(wire::decode_seal_reply(f.body).unwrap())
}

fn read(u: &mut Unit<MmapStore>, epoch: u64, addrs: &[u64]) -> Vec<(Status, Vec<u8>)> {
    send(u, 9_999_999, Opcode::Read, epoch, |b| {
        wire::encode_addr_list(b, addrs)
    });
    let r = one_reply(u);
    assert_eq!(error_code(&r), None, "read answered");
    let f = wire::parse_frame(&r.frame).unwrap().unwrap();
    wire::decode_read_reply(f.body)
        .unwrap()
        .iter()
        .map(|x| {
            (
                x.status,
                x.entry.map(|e| e.data.to_vec()).unwrap_or_default(),
            )
        })
        .collect()
}

/// A full unit still records a seal, however many: after the room kept at
/// the end of its segment is used up by earlier seals, in the `META` file.
/// Each seal is durable (it survives a reopen), fences lower epochs (P5), and
/// the data stays readable; a trim then frees space for writes again.
#[test]
fn a_full_unit_still_records_a_seal() {
    let Some(disk) = SmallDisk::mount("512k") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let mut u = open(&disk.path);
    let data = vec![5u8; 3000];
    let mut written = Vec::new();
    let mut id = 1;
    loop {
        let addr = written.len() as u64;
        id += 1;
        match write_status(&mut u, id, 0, addr, &data) {
            Status::Ok => written.push(addr),
            Status::Full => break,
            other => panic!("write of {addr} answered {other}"),
        }
        assert!(addr < 1000, "a 512 KiB disk never ran full");
    }
    assert!(u.full(), "the unit says it is full");
    assert!(written.len() > 50, "wrote {} entries first", written.len());
    // Far more seals than the 25 meta records the segment keeps room for.
    for epoch in 1..=100 {
        id += 1;
        let r = seal(&mut u, id, epoch).unwrap_or_else(|e| panic!("seal {epoch} refused: {e}"));
        assert!(r.sealed && r.sealed_epoch == epoch, "seal {epoch}: {r:?}");
        assert_eq!(r.tail, written.len() as u64);
    }
    assert!(
        disk.path.join("META").exists(),
        "the seals beyond the segment's reserve went to the META file"
    );
    // A write of a lower epoch is refused as a whole (P5).
    let op = wire::WriteOp {
        addr: 9_000,
        writer: 1,
        seq: 1,
        data: b"x",
    };
    send(&mut u, 1_000_000, Opcode::Write, 99, |b| {
        wire::encode_write_request(b, &[op])
    });
    let r = one_reply(&mut u);
    assert_eq!(error_code(&r), Some(wire::ErrorCode::SealedEpoch));
    // The data written before stays readable.
    let got = read(&mut u, 100, &written);
    assert!(got.iter().all(|(s, d)| *s == Status::Ok && *d == data));
    drop(u);

    // Every seal was durable: a reopen finds the newest.
    let mut u = open(&disk.path);
    assert_eq!(u.meta().sealed_epoch, 100);
    assert_eq!(u.tail(), written.len() as u64);
    let got = read(&mut u, 100, &written);
    assert!(got.iter().all(|(s, d)| *s == Status::Ok && *d == data));
    // Still full, still sealable.
    id += 1;
    assert_eq!(
        seal(&mut u, id, 101).map(|r| r.sealed_epoch),
        Ok(101),
        "sealed again after the reopen"
    );

    // A trim (also recorded with no room) frees whole segments, and writes
    // go on.
    let mark = written.len() as u64 - 1;
    send(&mut u, 2_000_000, Opcode::Trim, 101, |b| {
        wire::encode_u64(b, mark)
    });
    let r = one_reply(&mut u);
    assert_eq!(error_code(&r), None, "the trim is recorded");
    let next = written.len() as u64;
    id += 1;
    assert_eq!(write_status(&mut u, id, 101, next, &data), Status::Ok);
    assert!(!u.full());
    drop(u);
    let u = open(&disk.path);
    assert_eq!(u.meta().sealed_epoch, 101);
    assert_eq!(u.meta().trim_mark, mark);
}

/// A full unit still fills holes: data stops, but junk goes into room each
/// segment keeps for fills, so the last replica of a closed range that ran
/// full can still have its holes decided (readers and repair wait on them
/// otherwise). Each fill is durable and reads back as junk after a reopen.
#[test]
fn a_full_unit_still_fills_holes() {
    let Some(disk) = SmallDisk::mount("512k") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let mut u = open(&disk.path);
    let data = vec![5u8; 3000];
    let mut id = 1;
    let mut addr = 0;
    loop {
        id += 1;
        match write_status(&mut u, id, 0, addr, &data) {
            Status::Ok => addr += 1,
            Status::Full => break,
            other => panic!("write of {addr} answered {other}"),
        }
        assert!(addr < 1000, "a 512 KiB disk never ran full");
    }
    // Then the smallest entries, until not even those fit.
    loop {
        id += 1;
        match write_status(&mut u, id, 0, addr, b"x") {
            Status::Ok => addr += 1,
            Status::Full => break,
            other => panic!("write of {addr} answered {other}"),
        }
        assert!(addr < 100_000, "small writes never ran full");
    }
    assert!(u.full(), "the unit says it is full");
    // Holes above the tail (writes that never came): 16 fills, each ok.
    let holes: Vec<u64> = (addr + 1..addr + 17).collect();
    for h in &holes {
        id += 1;
        send(&mut u, id, Opcode::Fill, 0, |b| {
            wire::encode_addr_list(b, &[*h])
        });
        let r = one_reply(&mut u);
        assert_eq!(error_code(&r), None, "fill of {h} answered");
        let f = wire::parse_frame(&r.frame).unwrap().unwrap();
        let st = wire::decode_status_list(f.body).unwrap().iter().next();
        assert_eq!(st, Some(Status::Ok), "fill of {h} on a full unit");
    }
    // Data is still refused.
    id += 1;
    assert_eq!(write_status(&mut u, id, 0, addr, &data), Status::Full);
    let got = read(&mut u, 0, &holes);
    assert!(got.iter().all(|(s, _)| *s == Status::Junk), "{got:?}");
    drop(u);
    let mut u = open(&disk.path);
    let got = read(&mut u, 0, &holes);
    assert!(
        got.iter().all(|(s, _)| *s == Status::Junk),
        "after a reopen: {got:?}"
    );
}
