//! Runs the storage unit's sync jobs off the event loop: through `io_uring`
//! (fdatasync completions signalled on an eventfd the loop polls) where the
//! kernel allows it, otherwise on a plain thread that wakes the loop through a
//! `mio::Waker`. Which path runs is decided once at start and logged. Also the
//! one rule recovery uses to tell a write a crash tore from corruption
//! ([`RecoveryMode`]), shared by the storage unit's segments and the consensus
//! journal.

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token, Waker};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;

/// What a sync must make durable.
#[derive(Debug, Clone)]
pub struct SyncJob {
    /// Everything appended up to this LSN is durable once the job completes.
    pub lsn: u64,
    /// Files to `fdatasync`.
    pub files: Vec<Arc<File>>,
    /// A directory to `fsync` (a segment was created or deleted).
    pub dir: Option<Arc<File>>,
}

/// How recovery tells a torn write (a crash cut it short: cut it off) from
/// corruption (data that was durable went bad), after fjall's
/// `RecoveryMode::TolerateCorruptTail`. Shared by the storage unit's segment
/// scan and the consensus journal reader, which differ only in how they find
/// out whether anything intact follows the damage (segments look for the next
/// record that verifies, at aligned offsets, with the segment's nonce; journal
/// records are unaligned and unseeded, so the journal asks whether the damaged
/// record's own length reaches the end of the file) and in what they do with
/// corruption (a unit skips and reports it, never serving it: other replicas
/// hold the entries; a consensus node refuses to start: its promises cannot
/// come from anywhere else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Damage is a torn write only where a crash can leave one: in the file
    /// still being appended to, with nothing intact after it. Everything
    /// before a sync barrier (an older segment, a record followed by intact
    /// ones) was durable, so damage there is corruption.
    TolerateCorruptTail,
}

/// What recovery makes of a record that failed verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// A write a crash tore: cut it off (it was never acknowledged).
    TornTail,
    /// Durable data went bad: the store's own rule applies.
    Corrupt,
}

impl RecoveryMode {
    /// Judges a damaged record: `in_active_file` if it lies in the file still
    /// being appended to, `intact_after` if a record that verifies follows it.
    pub fn judge(self, in_active_file: bool, intact_after: bool) -> Damage {
        match self {
            RecoveryMode::TolerateCorruptTail if in_active_file && !intact_after => {
                Damage::TornTail
            }
            RecoveryMode::TolerateCorruptTail => Damage::Corrupt,
        }
    }
}

/// Outcome of a finished job: its LSN and whether every sync in it succeeded.
pub type SyncDone = (u64, Result<(), String>);

/// The sync path in use.
pub enum Syncer {
    /// io_uring with an eventfd.
    Uring(Box<UringSyncer>),
    /// A sync thread and a waker.
    Thread(ThreadSyncer),
}

impl Syncer {
    /// Picks io_uring if it works here (and `TREX_SYNC_BACKEND` is not `thread`),
    /// else a sync thread. Returns the syncer and a sentence for the log.
    pub fn detect(registry: &Registry, uring_token: Token, waker: Arc<Waker>) -> (Syncer, String) {
        let forced = std::env::var("TREX_SYNC_BACKEND").unwrap_or_default();
        if forced != "thread" {
            match UringSyncer::new(registry, uring_token) {
                Ok(u) => {
                    return (
                        Syncer::Uring(Box::new(u)),
                        "syncs run through io_uring (fdatasync)".into(),
                    )
                }
                Err(e) => {
                    let t = ThreadSyncer::new(waker);
                    let why = format!(
                        "io_uring is not available here ({e}); syncs run on a sync thread instead"
                    );
                    return (Syncer::Thread(t), why);
                }
            }
        }
        let why = "TREX_SYNC_BACKEND=thread: syncs run on a sync thread".to_string();
        (Syncer::Thread(ThreadSyncer::new(waker)), why)
    }

    /// Whether this is the io_uring path.
    pub fn is_uring(&self) -> bool {
        matches!(self, Syncer::Uring(_))
    }

    /// Starts a job. Only one runs at a time.
    pub fn submit(&mut self, job: SyncJob) {
        match self {
            Syncer::Uring(u) => u.submit(job),
            Syncer::Thread(t) => t.submit(job),
        }
    }

    /// A finished job, if any. Call after the eventfd or the waker fired.
    pub fn poll_done(&mut self) -> Option<SyncDone> {
        match self {
            Syncer::Uring(u) => u.poll_done(),
            Syncer::Thread(t) => t.done.try_recv().ok(),
        }
    }
}

/// Syncs through io_uring.
pub struct UringSyncer {
    ring: io_uring::IoUring,
    eventfd: OwnedFd,
    /// Tags the entries of each job, so completions of an older job are never
    /// counted for a newer one.
    seq: u64,
    job: Option<Inflight>,
    finished: Option<SyncDone>,
}

struct Inflight {
    /// Kept until every completion is reaped: its `Arc<File>`s keep the
    /// descriptors the kernel is syncing open.
    job: SyncJob,
    seq: u64,
    remaining: usize,
    error: Option<String>,
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
    )
}

impl UringSyncer {
    fn new(registry: &Registry, token: Token) -> io::Result<UringSyncer> {
        let ring = io_uring::IoUring::new(64)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(io_uring::opcode::Fsync::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "kernel lacks IORING_OP_FSYNC",
            ));
        }
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly created descriptor that we own.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        registry.register(
            &mut SourceFd(&eventfd.as_raw_fd()),
            token,
            Interest::READABLE,
        )?;
        Ok(UringSyncer {
            ring,
            eventfd,
            seq: 0,
            job: None,
            finished: None,
        })
    }

    /// Hands queued entries to the kernel, retrying transient errors. Returns
    /// how many it took.
    fn submit_queued(&mut self) -> Result<usize, String> {
        let mut tries = 0;
        loop {
            match self.ring.submit() {
                Ok(n) => return Ok(n),
                Err(e) if retryable(&e) && tries < 100 => {
                    tries += 1;
                    std::thread::yield_now();
                }
                Err(e) => return Err(format!("io_uring submit failed: {e}")),
            }
        }
    }

    fn submit(&mut self, job: SyncJob) {
        use io_uring::{opcode, types};
        assert!(self.job.is_none(), "one sync job at a time");
        self.seq += 1;
        let seq = self.seq;
        let datasync = job.files.iter().map(|f| {
            opcode::Fsync::new(types::Fd(f.as_raw_fd()))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
        });
        let dir = job
            .dir
            .iter()
            .map(|d| opcode::Fsync::new(types::Fd(d.as_raw_fd())).build());
        let entries: Vec<io_uring::squeue::Entry> =
            datasync.chain(dir).map(|e| e.user_data(seq)).collect();
        if entries.is_empty() {
            self.finished = Some((job.lsn, Ok(())));
            return;
        }
        let mut submitted = 0;
        let mut error = None;
        'push: for e in &entries {
            // SAFETY: the descriptors stay open until completion: the job (and its
            // Arc<File>s) is kept in self.job until every completion is reaped.
            while unsafe { self.ring.submission().push(e) }.is_err() {
                match self.submit_queued() {
                    Ok(n) => submitted += n,
                    Err(err) => {
                        error = Some(err);
                        break 'push;
                    }
                }
            }
        }
        if error.is_none() {
            while submitted < entries.len() {
                match self.submit_queued() {
                    Ok(0) => {
                        error = Some("io_uring took no entries".to_string());
                        break;
                    }
                    Ok(n) => submitted += n,
                    Err(err) => {
                        error = Some(err);
                        break;
                    }
                }
            }
        }
        // After an error the unit is poisoned and never syncs again, so entries
        // left in the queue are never submitted; the ones taken complete normally.
        if submitted == 0 {
            let result = Err(error.unwrap_or_else(|| "nothing was submitted".into()));
            self.finished = Some((job.lsn, result));
            return;
        }
        self.job = Some(Inflight {
            job,
            seq,
            remaining: submitted,
            error,
        });
    }

    fn poll_done(&mut self) -> Option<SyncDone> {
        if let Some(done) = self.finished.take() {
            return Some(done);
        }
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into a local buffer from our eventfd (non-blocking).
        unsafe { libc::read(self.eventfd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        let inflight = self.job.as_mut()?;
        for cqe in self.ring.completion() {
            if cqe.user_data() != inflight.seq {
                continue; // from a job that already failed
            }
            inflight.remaining = inflight.remaining.saturating_sub(1);
            if cqe.result() < 0 {
                let e = io::Error::from_raw_os_error(-cqe.result());
                inflight
                    .error
                    .get_or_insert(format!("fdatasync failed: {e}"));
            }
        }
        if inflight.remaining > 0 {
            return None;
        }
        let done = self.job.take()?;
        let result = match done.error {
            Some(e) => Err(e),
            None => Ok(()),
        };
        Some((done.job.lsn, result))
    }
}

/// Syncs on a dedicated thread.
pub struct ThreadSyncer {
    jobs: mpsc::Sender<SyncJob>,
    done: mpsc::Receiver<SyncDone>,
}

fn run_job(job: &SyncJob) -> Result<(), String> {
    for f in &job.files {
        f.sync_data()
            .map_err(|e| format!("fdatasync failed: {e}"))?;
    }
    if let Some(d) = &job.dir {
        File::sync_all(d).map_err(|e| format!("directory fsync failed: {e}"))?;
    }
    Ok(())
}

impl ThreadSyncer {
    fn new(waker: Arc<Waker>) -> ThreadSyncer {
        let (jobs, rx) = mpsc::channel::<SyncJob>();
        let (tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("trex-sync".into())
            .spawn(move || {
                for job in rx {
                    let r = run_job(&job);
                    let lsn = job.lsn;
                    drop(job);
                    if tx.send((lsn, r)).is_err() {
                        break;
                    }
                    let _ = waker.wake();
                }
            })
            .expect("spawn the sync thread");
        ThreadSyncer { jobs, done }
    }

    fn submit(&mut self, job: SyncJob) {
        let _ = self.jobs.send(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_damage_at_the_end_of_the_active_file_is_a_torn_tail() {
        let mode = RecoveryMode::TolerateCorruptTail;
        assert_eq!(mode.judge(true, false), Damage::TornTail);
        assert_eq!(
            mode.judge(true, true),
            Damage::Corrupt,
            "intact data follows"
        );
        assert_eq!(
            mode.judge(false, false),
            Damage::Corrupt,
            "behind a barrier"
        );
        assert_eq!(mode.judge(false, true), Damage::Corrupt);
    }
}
