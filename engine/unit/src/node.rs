//! The storage-unit node: a [`Unit`] over memory-mapped segments, driven by the
//! event loop, with syncs through io_uring or a sync thread.

use crate::storage::mmap::{MmapOptions, MmapStore};
use crate::unit::{Reply, ReplyTo, Unit, UnitConfig};
use mio::Token;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use trex_net::sync::Syncer;
use trex_net::{service_token, EventLoop, Flow, LoopConfig, Service};
use trex_wire::Header;

const SYNC_TOKEN: usize = 0;
const STATS_TIMER: u64 = 1;
const STATS_EVERY: Duration = Duration::from_secs(10);

/// How to run a storage unit.
#[derive(Clone, Debug)]
pub struct StorageOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Size of each segment file.
    pub segment_size: u64,
    /// Skip syncs for data writes (benchmarks only).
    pub sync_never: bool,
    /// Cluster id frames must carry.
    pub cluster_id: u32,
    /// Event-loop limits.
    pub limits: LoopConfig,
}

/// The storage unit as an event-loop service.
pub struct StorageService {
    unit: Unit<MmapStore>,
    syncer: Syncer,
    frames: u64,
    syncs: u64,
    last_stats: (u64, u64),
    /// Whether the unit said `full` last time we looked (logged on change).
    was_full: bool,
}

impl StorageService {
    /// The unit inside.
    pub fn unit(&self) -> &Unit<MmapStore> {
        &self.unit
    }

    fn reap_syncs(&mut self) {
        while let Some((lsn, result)) = self.syncer.poll_done() {
            self.syncs += 1;
            if let Err(e) = &result {
                trex_net::log_line!("ERROR", "sync failed: {e}; the unit is poisoned and refuses writes from now on; restart it");
            }
            self.unit.on_synced(lsn, result);
        }
    }
}

impl Service for StorageService {
    fn on_frame(&mut self, to: ReplyTo, header: &Header, body: &[u8]) -> Flow {
        self.frames += 1;
        let flow = match self.unit.on_frame(to, header, body) {
            true => Flow::Reply,
            false => Flow::Close,
        };
        if self.unit.full() != self.was_full {
            self.was_full = self.unit.full();
            if self.was_full {
                trex_net::log_line!("ERROR", "the data directory is full: writes are answered `full` and clients take this unit out of its chains; free space (or move the data to a larger disk) and restart it");
            } else {
                trex_net::log_line!("INFO", "writes succeed again: there is space");
            }
        }
        flow
    }

    fn poll_reply(&mut self) -> Option<Reply> {
        self.unit.poll_reply()
    }

    fn on_event(&mut self, token: Token) {
        if token == service_token(SYNC_TOKEN) {
            self.reap_syncs();
        }
    }

    fn on_wake(&mut self) {
        self.reap_syncs();
    }

    fn tick(&mut self) {
        if let Some(job) = self.unit.poll_sync() {
            self.syncer.submit(job);
            // A job with nothing to sync completes at once.
            self.reap_syncs();
        }
    }

    fn busy(&self) -> bool {
        self.unit.syncing() || self.unit.pending_replies() > 0
    }

    fn periodic_timers(&self) -> Vec<(Duration, u64)> {
        vec![(STATS_EVERY, STATS_TIMER)]
    }

    fn on_timer(&mut self, _id: u64, _now: Instant) {
        let (frames, syncs) = (
            self.frames - self.last_stats.0,
            self.syncs - self.last_stats.1,
        );
        if frames > 0 {
            let i = self.unit.info();
            trex_net::log_line!(
                "INFO",
                "last {}s: {} requests, {} syncs; tail {}, {} entries, {} segments",
                STATS_EVERY.as_secs(),
                frames,
                syncs,
                i.tail,
                i.entries,
                i.segments
            );
        }
        self.last_stats = (self.frames, self.syncs);
    }
}

/// Opens the data directory, recovers, and serves until SIGINT/SIGTERM.
pub fn run_storage(opts: &StorageOptions) -> Result<(), String> {
    // Before any thread exists, so that only the loop's signalfd sees them.
    trex_net::block_shutdown_signals().map_err(|e| format!("cannot block signals: {e}"))?;
    let started = Instant::now();
    let mut store = MmapStore::open(
        &opts.data_dir,
        &MmapOptions {
            segment_size: opts.segment_size,
        },
    )?;
    store.set_rollover_barrier(!opts.sync_never);
    let cfg = UnitConfig {
        cluster_id: opts.cluster_id,
        sync_never: opts.sync_never,
        io_uring: false,
    };
    let (mut unit, stats) = Unit::open(store, cfg)?;
    {
        let s = unit_store_report(&unit);
        for note in &s.notes {
            trex_net::log_line!("WARN", "recovery: {note}");
        }
        trex_net::log_line!(
            "INFO",
            "recovered {} in {:.1?}: {} records ({} corrupt, {} duplicates) from {} indexed + {} scanned segments; tail {}, sealed epoch {}, trim mark {}",
            opts.data_dir.display(),
            started.elapsed(),
            stats.records,
            stats.corrupt,
            stats.duplicates,
            s.indexed,
            s.scanned,
            unit.tail(),
            unit.meta().sealed_epoch,
            unit.meta().trim_mark
        );
    }
    if opts.sync_never {
        trex_net::log_line!(
            "WARN",
            "--sync never: writes are acknowledged BEFORE they are durable; a crash or power loss loses acknowledged entries. For benchmarks only."
        );
    }
    let mut el = EventLoop::bind(opts.listen, opts.limits, |registry, waker| {
        let (syncer, how) = Syncer::detect(registry, service_token(SYNC_TOKEN), waker);
        trex_net::log_line!("INFO", "{how}");
        unit.set_io_uring(syncer.is_uring());
        Ok(StorageService {
            unit,
            syncer,
            frames: 0,
            syncs: 0,
            last_stats: (0, 0),
            was_full: false,
        })
    })
    .map_err(|e| {
        format!(
            "cannot listen on {}: {e}; is another process using the port?",
            opts.listen
        )
    })?;
    el.stop_on_signals()
        .map_err(|e| format!("cannot install signal handling: {e}"))?;
    trex_net::log_line!(
        "INFO",
        "storage unit listening on {} (data in {})",
        el.local_addr(),
        opts.data_dir.display()
    );
    let svc = el.run().map_err(|e| format!("event loop failed: {e}"))?;
    trex_net::log_line!("INFO", "stopped cleanly; tail {}", svc.unit().tail());
    Ok(())
}

fn unit_store_report(unit: &Unit<MmapStore>) -> crate::storage::mmap::OpenReport {
    unit.store().report.clone()
}
