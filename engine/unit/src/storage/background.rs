//! File work of the segment store that must not hold up the event loop: the
//! next segment is created, preallocated and mapped ahead of need (a
//! *spare*); the index file of a full segment is written; reclaimed segments
//! are unmapped and deleted. Each of these can wait for the disk (ext4 queues
//! an `fallocate` behind the writeback of the previous segment; a deletion
//! frees extents; an index of a segment of small records is megabytes), and
//! every request on a unit waits with its loop.
//!
//! A spare's pages are faulted in (zeroed in the page cache) by the thread
//! too, a step at a time as the active segment fills ([`pace_target`]), so
//! the loop's first writes to them are cheap and the zeroing never comes in
//! one burst. The thread does that through a mapping of its own, and hands
//! the spare to the loop as soon as it is made: at rollover the loop takes
//! it without the thread's help, however far the faulting-in got (the loop
//! faults in the rest itself). The loop waiting for the thread was a
//! priority inversion: the thread runs only on idle CPU, and under load the
//! CPU is never idle, so a rollover that asked it to hurry waited for every
//! other busy thread (27-44 ms at the first rollover of 4 KiB open-loop
//! runs, the largest latency of those runs).
//!
//! One thread runs the jobs in the order they were sent, so an index is
//! written before its segment is deleted. A spare is made under a `.tmp`
//! name, which [`super::mmap::MmapStore::open`] removes: a spare never in use
//! is not a segment, whatever a crash leaves of it. The loop renames it to
//! its segment name when it takes it over.

use super::mmap::IndexImage;
use super::AppendError;
use memmap2::{Mmap, MmapMut};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

/// A segment file created, preallocated and mapped, not yet in use.
pub(crate) struct Spare {
    /// The segment id it was made for.
    pub id: u32,
    /// Where it lies until taken over (a `.tmp` name).
    pub path: PathBuf,
    /// The open file.
    pub file: File,
    /// Its mapping, the whole file.
    pub map: MmapMut,
}

/// A job for the thread.
enum Job {
    /// Make the spare for segment `id` at `path`, `size` bytes.
    Prepare { id: u32, path: PathBuf, size: u64 },
    /// Write an index file (to `tmp`, then renamed to `path`).
    WriteIndex {
        tmp: PathBuf,
        path: PathBuf,
        image: IndexImage,
    },
    /// Unmap (by dropping) a reclaimed segment, then delete its files.
    Remove {
        mapping: Option<MmapMut>,
        paths: Vec<PathBuf>,
    },
    /// Start the write-back of `len` bytes of `file` from `off`
    /// (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`: not a durability
    /// point, nothing waits for it).
    WriteBack { file: Arc<File>, off: u64, len: u64 },
    /// Answer once every job sent before has run.
    Barrier(mpsc::Sender<()>),
}

/// The thread and its channels.
pub(crate) struct Background {
    jobs: Option<mpsc::Sender<Job>>,
    spares: mpsc::Receiver<Result<Spare, AppendError>>,
    /// How full the active segment is, in [`FILL_ONE`]ths (the loop's
    /// progress), which paces the faulting-in of the spare ([`pace_target`]).
    fill: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts the thread.
    pub fn start() -> io::Result<Background> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tx, spares) = mpsc::channel();
        let fill = Arc::new(AtomicU64::new(0));
        let progress = Arc::clone(&fill);
        let thread = std::thread::Builder::new()
            .name("trex-segments".into())
            .spawn(move || {
                idle_priority();
                serve(&rx, &tx, &progress);
            })?;
        Ok(Background {
            jobs: Some(jobs),
            spares,
            fill,
            thread: Some(thread),
        })
    }

    fn send(&self, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok())
    }

    /// Asks for the spare of segment `id`. Returns false if the thread is gone.
    pub fn prepare(&self, id: u32, path: PathBuf, size: u64) -> bool {
        self.send(Job::Prepare { id, path, size })
    }

    /// Tells the thread that `used` of the active segment's `size` bytes
    /// are used (a relaxed store: called on every append).
    pub fn note_fill(&self, used: u64, size: u64) {
        let frac =
            (u128::from(used.min(size)) * u128::from(FILL_ONE) / u128::from(size.max(1))) as u64;
        self.fill.store(frac, Ordering::Relaxed);
    }

    /// The spare asked for last, if it is made (`wait`: waiting until it
    /// is; it is handed over made and mapped, faulted in as far as the
    /// thread got). `None`: not made yet (or the thread is gone).
    pub fn spare(&self, wait: bool) -> Option<Result<Spare, AppendError>> {
        if wait {
            self.spares.recv().ok()
        } else {
            self.spares.try_recv().ok()
        }
    }

    /// Writes an index file in the background; false if the thread is gone.
    pub fn write_index(&self, tmp: PathBuf, path: PathBuf, image: IndexImage) -> bool {
        self.send(Job::WriteIndex { tmp, path, image })
    }

    /// Starts writing `len` bytes of `file` from `off` back to the disk in
    /// the background (see [`WRITEBACK_STEP`]); false if the thread is gone.
    pub fn write_back(&self, file: Arc<File>, off: u64, len: u64) -> bool {
        self.send(Job::WriteBack { file, off, len })
    }

    /// Unmaps and deletes a reclaimed segment in the background. If the
    /// thread is gone, does it here.
    pub fn remove(&self, mapping: Option<MmapMut>, paths: Vec<PathBuf>) {
        if let Some(jobs) = &self.jobs {
            match jobs.send(Job::Remove { mapping, paths }) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => return run(job),
            }
        }
        run(Job::Remove { mapping, paths });
    }

    /// Waits until every job sent so far has run (deletions done, indexes
    /// written). A spare still being faulted in is not waited for.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if self.send(Job::Barrier(tx)) {
            let _ = rx.recv();
        }
    }
}

impl Drop for Background {
    /// Runs what was sent (indexes, deletions), stops the thread, and
    /// deletes a spare never taken (it would only be removed at the next
    /// open, holding a segment's worth of disk until then).
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for spare in self.spares.try_iter().flatten() {
            drop(spare.map);
            let _ = fs::remove_file(&spare.path);
        }
    }
}

/// A spare handed to the loop and being faulted in, a step at a time,
/// through the thread's own (read-only) mapping of its file.
struct Pending {
    feed: Mmap,
    /// Bytes from the start already faulted in.
    done: usize,
}

/// The fill of a whole segment ([`Background::note_fill`]).
const FILL_ONE: u64 = 1 << 20;

/// How far into a spare of `len` bytes the thread faults pages in while the
/// active segment is `fill` [`FILL_ONE`]ths full: the same fraction of the spare plus a lead of an eighth, so the spare is whole when
/// the active segment is seven eighths full. Paced rather than at once: a
/// unit that faulted a whole 64 MiB spare in right after each rollover zeroed
/// 64 MiB in under a second, and the four units of `trex up`, which fill
/// their segments at the same pace, did it in the same second: in a profile
/// of open-loop appends (100 B at 100,000/s) that second was 45 % of all CPU
/// in `memset` under `MADV_POPULATE_READ`, and every request of that second
/// waited (p99 of the run 50-390 ms, one stall per rollover). Spread over
/// the segment's life it is a few milliseconds of CPU now and then.
fn pace_target(fill: u64, len: usize) -> usize {
    let share = (u128::from(fill.min(FILL_ONE)) * len as u128 / u128::from(FILL_ONE)) as usize;
    (share + len / 8)
        .div_ceil(POPULATE_STEP)
        .saturating_mul(POPULATE_STEP)
        .min(len)
}

/// How long the thread sleeps between looks at the loop's progress while a
/// spare is ahead of it and the active segment is filling ...
const PACE_POLL: Duration = Duration::from_millis(10);

/// ... and while it is not (an idle unit): a look every 10 ms would wake
/// every idle unit 100 times a second for nothing. Up to this long the
/// spare may then trail a burst that starts; the lead of an eighth of a
/// segment covers that.
const PACE_POLL_IDLE: Duration = Duration::from_millis(100);

/// The thread: runs jobs in order, and between them faults in the latest
/// spare at the loop's pace ([`pace_target`]). The spare itself is handed
/// over as soon as it is made.
fn serve(
    rx: &mpsc::Receiver<Job>,
    spares: &mpsc::Sender<Result<Spare, AppendError>>,
    fill: &AtomicU64,
) {
    let mut pending: Option<Pending> = None;
    let mut seen_fill = u64::MAX;
    loop {
        let next = match pending.as_mut() {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(p) => {
                let len = p.feed.len();
                if p.done >= len {
                    pending = None; // whole: unmap the feed (the pages stay cached)
                    continue;
                }
                let now_fill = fill.load(Ordering::Relaxed);
                let filling = now_fill != seen_fill;
                seen_fill = now_fill;
                if p.done < pace_target(now_fill, len) {
                    let step = POPULATE_STEP.min(len - p.done);
                    populate(&p.feed, p.done, step);
                    p.done += step;
                    match rx.try_recv() {
                        Ok(job) => Ok(job),
                        Err(mpsc::TryRecvError::Empty) => continue,
                        Err(mpsc::TryRecvError::Disconnected) => {
                            Err(mpsc::RecvTimeoutError::Disconnected)
                        }
                    }
                } else {
                    rx.recv_timeout(if filling { PACE_POLL } else { PACE_POLL_IDLE })
                }
            }
        };
        match next {
            Ok(Job::Prepare { id, path, size }) => {
                // The spare before is in use by now: the loop faults in
                // whatever of it this thread did not get to.
                pending = None;
                // A leftover of an earlier attempt (never in use: a `.tmp` name).
                let _ = fs::remove_file(&path);
                match make_spare(id, &path, size) {
                    Ok(spare) => {
                        // SAFETY: the spare's file, ours alone (the data
                        // directory is locked), never truncated while mapped;
                        // this mapping only reads.
                        let feed = match unsafe { Mmap::map(&spare.file) } {
                            Ok(m) => m,
                            Err(e) => {
                                trex_net::log_line!(
                                    "WARN",
                                    "cannot map {} to fault it in ahead: {e}; the loop faults its pages in as it writes",
                                    spare.path.display()
                                );
                                let _ = spares.send(Ok(spare));
                                continue;
                            }
                        };
                        // Fault in page by page (no readahead): each step is
                        // then many short stretches of kernel work rather
                        // than a few long ones the loop cannot preempt (the
                        // kernel here is PREEMPT_NONE). Measured side by side,
                        // open loop 100 B at 100K/s: p99 1.0 ms with Random,
                        // 7-24 ms with Normal or Sequential readahead; 4 KiB
                        // at 12K/s: 4.9 ms vs 40-44 ms. The price is CPU:
                        // the closed-loop peak of 100 B appends is 4-12 % lower
                        // (docs/benchmarks.md).
                        let _ = feed.advise(memmap2::Advice::Random);
                        pending = Some(Pending { feed, done: 0 });
                        if let Err(mpsc::SendError(Ok(spare))) = spares.send(Ok(spare)) {
                            drop(spare.map);
                            let _ = fs::remove_file(&spare.path);
                        }
                    }
                    Err(e) => {
                        let _ = spares.send(Err(e));
                    }
                }
            }
            Ok(job) => run(job),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
}

fn run(job: Job) {
    match job {
        Job::Prepare { .. } => {}
        Job::WriteIndex { tmp, path, image } => {
            let bytes = image.encode();
            if let Err(e) = fs::write(&tmp, &bytes).and_then(|_| fs::rename(&tmp, &path)) {
                // Only a cache: the segment is scanned at the next open instead.
                trex_net::log_line!("WARN", "cannot write index {}: {e}", path.display());
            }
        }
        Job::Remove { mapping, paths } => {
            drop(mapping); // unmaps before the file goes
            for p in paths {
                if let Err(e) = fs::remove_file(&p) {
                    if e.kind() != io::ErrorKind::NotFound {
                        trex_net::log_line!("WARN", "cannot remove {}: {e}", p.display());
                    }
                }
            }
        }
        Job::WriteBack { file, off, len } => {
            // Only an early start, so its result does not matter: the
            // rollover's fdatasync writes (and reports) whatever this did not.
            // SAFETY: sync_file_range on a valid descriptor kept open by the
            // Arc; it reads no memory of ours.
            unsafe {
                libc::sync_file_range(
                    file.as_raw_fd(),
                    off as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        Job::Barrier(done) => {
            let _ = done.send(());
        }
    }
}

/// With `--sync never`, each stretch of this many bytes of the active segment
/// is handed to the disk as soon as the loop has written past it, rather than
/// all 64 MiB by the `fdatasync` at rollover (which stays, for whatever is
/// left). Four units of `trex up` fill their segments at the same pace and
/// roll over in the same second; their syncs then wrote 256 MB back at once
/// (`vmstat`: 262 MB out in one second, 8 % of all CPU in the sync threads)
/// and requests of that second waited 11-34 ms. In 4 MiB stretches the
/// write-back goes on evenly while the segment fills.
pub(crate) const WRITEBACK_STEP: u64 = 4 << 20;

/// Faults the spare's pages in for reading, here rather than on the loop:
/// a first touch of a page of a preallocated (unwritten) extent makes the
/// kernel allocate and zero a page-cache page, and appends that took those
/// faults spent about a fifth of all CPU on the loop (a profile of 100 B
/// appends). Read faults leave the pages clean, so nothing extra is written
/// back or synced; the loop's first write to each page is then a cheap
/// write-protect fault. Costs the segment's size in page cache ahead of use.
///
/// `len` bytes from `off`, called in steps of [`POPULATE_STEP`]: each call
/// holds the process's memory-map lock, and one call over a whole segment
/// (tens of milliseconds) held up the loop's own allocations (`brk`) behind
/// it, by 25 ms in a profile.
fn populate(map: &[u8], off: usize, len: usize) {
    // SAFETY: `off..off + len` lies inside a live mapping we own (callers
    // stay within `map.len()`); POPULATE_READ only faults pages in.
    let rc = unsafe {
        libc::madvise(
            map.as_ptr().add(off) as *mut libc::c_void,
            len,
            libc::MADV_POPULATE_READ,
        )
    };
    if rc != 0 {
        // Older kernels (before 5.14): touch one byte per page.
        let mut sum = 0u8;
        for page in (off..off + len).step_by(4096) {
            // SAFETY: `page` is inside the mapping.
            sum ^= unsafe { std::ptr::read_volatile(map.as_ptr().add(page)) };
        }
        std::hint::black_box(sum);
    }
}

/// How much of a spare [`populate`] faults in per call.
const POPULATE_STEP: usize = 1 << 20;

/// Runs the calling thread only when a CPU has nothing else to do
/// (`SCHED_IDLE`), else at nice 10. For the segment thread: faulting in a
/// spare zeroes its whole size in one go (20-60 ms of CPU for 64 MiB), and
/// at nice 10 three units doing it at once still kept a unit's loop
/// runnable and waiting 92 ms on two cores. Its work is never urgent until
/// the loop waits for it, and then the loop sleeps and leaves it the CPU.
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread (0) with a valid param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        trex_net::util::lower_priority();
    }
}

fn io_err(what: &str, path: &Path, e: io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

/// Creates `path`, preallocates `size` bytes and maps it. On a full disk the
/// file is removed again and the answer is [`AppendError::Full`].
pub(crate) fn make_spare(id: u32, path: &Path, size: u64) -> Result<Spare, AppendError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| AppendError::Io(io_err("cannot create segment", path, e)))?;
    if let Err(e) = preallocate(&file, path, size) {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    // SAFETY: the file is new, sized, ours alone (the data directory is
    // locked), and never truncated while mapped.
    let map = match unsafe { MmapMut::map_mut(&file) } {
        Ok(m) => m,
        Err(e) => {
            let _ = fs::remove_file(path);
            return Err(AppendError::Io(io_err("cannot map", path, e)));
        }
    };
    // Appends walk the segment front to back: ask for aggressive readahead,
    // which faults the preallocated (zero-filled) pages in large batches
    // (measured: ~8% more appends/s than the default, ~50% more than Random).
    // The thread faults pages in through a mapping of its own, set to Random.
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(Spare {
        id,
        path: path.to_path_buf(),
        file,
        map,
    })
}

/// Gives `file` its `size` bytes of disk blocks, with `fallocate`, or on file
/// systems without it by writing zeros, so that a write fault through the
/// mapping can never meet a full disk (SIGBUS).
fn preallocate(file: &File, path: &Path, size: u64) -> Result<(), AppendError> {
    // SAFETY: fallocate on a valid, owned descriptor.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOSPC) {
        return Err(AppendError::Full(format!(
            "cannot preallocate {size} bytes for {}: disk full; trim the log or add space",
            path.display()
        )));
    }
    let zeros = vec![0u8; 1 << 20];
    let mut f = file;
    for _ in 0..size.div_ceil(zeros.len() as u64) {
        if let Err(e) = f.write_all(&zeros) {
            return Err(if e.raw_os_error() == Some(libc::ENOSPC) {
                AppendError::Full(format!("disk full while creating {}", path.display()))
            } else {
                AppendError::Io(io_err("cannot write", path, e))
            });
        }
    }
    file.set_len(size)
        .map_err(|e| AppendError::Io(io_err("cannot size", path, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_is_faulted_in_an_eighth_ahead_of_the_active_segment() {
        let len = 64 << 20;
        // An empty active segment: the lead only.
        assert_eq!(pace_target(0, len), 8 << 20);
        // Half full: half the spare and the lead, in whole steps.
        assert_eq!(pace_target(FILL_ONE / 2, len), 40 << 20);
        assert_eq!(pace_target(FILL_ONE / 2 + 1, len), 41 << 20);
        // Seven eighths full or more: the whole spare.
        assert_eq!(pace_target(FILL_ONE * 7 / 8, len), len);
        assert_eq!(pace_target(FILL_ONE, len), len);
        assert_eq!(pace_target(u64::MAX, len), len);
        // A spare smaller than a step is taken whole.
        assert_eq!(pace_target(0, 4096), 4096);
    }

    /// Pages of `map` in the page cache (`mincore`).
    fn resident(map: &[u8]) -> usize {
        let pages = map.len().div_ceil(4096);
        let mut v = vec![0u8; pages];
        // SAFETY: a live mapping of `map.len()` bytes and a vector of one
        // byte per page.
        let rc =
            unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, map.len(), v.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
        v.iter().filter(|b| *b & 1 == 1).count()
    }

    #[test]
    fn a_spare_is_handed_over_once_made_and_faulted_in_at_the_loops_pace() {
        let dir = tempfile::tempdir().unwrap();
        let bg = Background::start().unwrap();
        // Nothing written to the active segment yet.
        bg.note_fill(0, 64 << 20);
        assert!(bg.prepare(7, dir.path().join("7.spare.tmp"), 16 << 20));
        // The loop never waits for the faulting-in: the spare comes as soon
        // as it is made.
        let spare = bg.spare(true).expect("thread alive").expect("spare made");
        assert_eq!(spare.id, 7);
        assert_eq!(spare.map.len(), 16 << 20);
        // Meanwhile the thread faults in the lead (an eighth), not more.
        let t = std::time::Instant::now();
        while resident(&spare.map) < 512 {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "lead never faulted in"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(resident(&spare.map), 512, "faulted in ahead of the pace");
        // The active segment fills: the thread faults the whole spare in,
        // though the loop has it already.
        bg.note_fill(64 << 20, 64 << 20);
        while resident(&spare.map) < 4096 {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "spare never faulted in"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // A spare never taken is deleted with the store.
        assert!(bg.prepare(9, dir.path().join("9.spare.tmp"), 4 << 20));
        std::thread::sleep(Duration::from_millis(100));
        drop(bg);
        assert!(!dir.path().join("9.spare.tmp").exists());
    }
}
