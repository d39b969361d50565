//! File work of the segment store that must not hold up the event loop: the
//! next segment is created, preallocated and mapped ahead of need (a
//! *spare*); the index file of a full segment is written; reclaimed segments
//! are unmapped and deleted. Each of these can wait for the disk (ext4 queues
//! an `fallocate` behind the writeback of the previous segment; a deletion
//! frees extents; an index of a segment of small records is megabytes), and
//! every request on a unit waits with its loop.
//!
//! One thread runs the jobs in the order they were sent, so an index is
//! written before its segment is deleted. A spare is made under a `.tmp`
//! name, which [`super::mmap::MmapStore::open`] removes: a spare never in use
//! is not a segment, whatever a crash leaves of it. The loop renames it to
//! its segment name when it takes it over.

use super::mmap::IndexImage;
use super::AppendError;
use memmap2::MmapMut;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

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
    /// Answer once every job sent before has run.
    Barrier(mpsc::Sender<()>),
}

/// The thread and its channels.
pub(crate) struct Background {
    jobs: Option<mpsc::Sender<Job>>,
    spares: mpsc::Receiver<Result<Spare, AppendError>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts the thread.
    pub fn start() -> io::Result<Background> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tx, spares) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("trex-segments".into())
            .spawn(move || {
                idle_priority();
                for job in rx {
                    run(job, &tx);
                }
            })?;
        Ok(Background {
            jobs: Some(jobs),
            spares,
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

    /// The spare asked for last, if it is ready (`wait`: waiting until it is).
    /// `None`: not ready (or the thread is gone).
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

    /// Unmaps and deletes a reclaimed segment in the background. If the
    /// thread is gone, does it here.
    pub fn remove(&self, mapping: Option<MmapMut>, paths: Vec<PathBuf>) {
        if let Some(jobs) = &self.jobs {
            match jobs.send(Job::Remove { mapping, paths }) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => return run_here(job),
            }
        }
        run_here(Job::Remove { mapping, paths });
    }

    /// Waits until every job sent so far has run (deletions done, indexes
    /// written).
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

fn run_here(job: Job) {
    let (tx, _rx) = mpsc::channel();
    run(job, &tx);
}

fn run(job: Job, spares: &mpsc::Sender<Result<Spare, AppendError>>) {
    match job {
        Job::Prepare { id, path, size } => {
            // A leftover of an earlier attempt (never in use: a `.tmp` name).
            let _ = fs::remove_file(&path);
            let made = make_spare(id, &path, size);
            if let Ok(spare) = &made {
                populate(&spare.map);
            }
            let _ = spares.send(made);
        }
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
        Job::Barrier(done) => {
            let _ = done.send(());
        }
    }
}

/// Faults the spare's pages in for reading, here rather than on the loop:
/// a first touch of a page of a preallocated (unwritten) extent makes the
/// kernel allocate and zero a page-cache page, and appends that took those
/// faults spent about a fifth of all CPU on the loop (a profile of 100 B
/// appends). Read faults leave the pages clean, so nothing extra is written
/// back or synced; the loop's first write to each page is then a cheap
/// write-protect fault. Costs the segment's size in page cache ahead of use.
///
/// In steps of [`POPULATE_STEP`]: each call holds the process's memory-map
/// lock, and one call over a whole segment (tens of milliseconds) held up
/// the loop's own allocations (`brk`) behind it, by 25 ms in a profile.
fn populate(map: &MmapMut) {
    for off in (0..map.len()).step_by(POPULATE_STEP) {
        let len = POPULATE_STEP.min(map.len() - off);
        // SAFETY: `off..off + len` lies inside a live mapping we own;
        // POPULATE_READ only faults pages in.
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
}

/// How much of a spare [`populate`] faults in per call.
const POPULATE_STEP: usize = 1 << 20;

/// Lowers the calling thread's CPU priority (nice 10), for threads doing
/// background file work: on a busy machine with few cores they otherwise
/// take the CPU from the event loop for a whole time slice at a time (a
/// profile showed the loop runnable and waiting 24 ms).
pub(crate) fn lower_priority() {
    // SAFETY: gettid and setpriority on the calling thread; no memory involved.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

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
        lower_priority();
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
