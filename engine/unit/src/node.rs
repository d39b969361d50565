//! The storage-unit node: a [`Unit`] over memory-mapped segments, driven by the
//! event loop, with syncs through io_uring or a sync thread.

use crate::storage::mmap::{MmapOptions, MmapStore, SegmentStats};
use crate::unit::{Appends, Reply, ReplyTo, Unit, UnitConfig};
use mio::Token;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit as MetricUnit};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use trex_net::metrics::{self, BuildInfo, Health, MetricsConfig, U64Gauge};
use trex_net::sync::Syncer;
use trex_net::tls::Role;
use trex_net::{service_token, EventLoop, Flow, LoopConfig, Service};
use trex_wire::{Header, Opcode};

const SYNC_TOKEN: usize = 0;
const STATS_TIMER: u64 = 1;
const STATS_EVERY: Duration = Duration::from_secs(10);
const SCRUB_TIMER: u64 = 3;
/// How often the scrub verifies a little more of the records recovery took
/// from an index unread, and how much each time: at most 25 MB/s, in steps
/// short enough not to delay replies.
const SCRUB_EVERY: Duration = Duration::from_millis(10);
const SCRUB_BYTES: usize = 256 << 10;
const METRICS_TIMER: u64 = 2;
/// How often gauges, stored counts and readiness are sampled.
const METRICS_EVERY: Duration = Duration::from_millis(250);

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
    /// Serve metrics, `/healthz` and `/readyz` over HTTP (`--metrics-listen`).
    pub metrics: Option<MetricsConfig>,
    /// This binary's version and revision (`node-info`, `trex_build_info`).
    pub build: BuildInfo,
    /// Mutual TLS on every connection, and the roles certificates grant
    /// (`None`: plain TCP, every request served).
    pub tls: Option<trex_net::tls::TlsConfig>,
}

/// The storage unit's own metrics (beside the event loop's).
struct UnitMetrics {
    sync_duration: Histogram,
    sync_batch: Histogram,
    sync_failures: Counter,
    stored_entries: Counter,
    stored_junk: Counter,
    stored_bytes: Counter,
    tail: U64Gauge,
    sealed_epoch: U64Gauge,
    trim_mark: U64Gauge,
    entries: U64Gauge,
    junk: U64Gauge,
    corrupt: U64Gauge,
    segments: U64Gauge,
    segment_size: U64Gauge,
    used: U64Gauge,
    disk_free: U64Gauge,
    disk_total: U64Gauge,
    full: U64Gauge,
    poisoned: U64Gauge,
    pending: U64Gauge,
    rollovers: Counter,
    spare_waits: Counter,
    created_on_loop: Counter,
}

impl UnitMetrics {
    fn new() -> UnitMetrics {
        UnitMetrics {
            sync_duration: metrics::latency_histogram(),
            sync_batch: metrics::size_histogram(),
            sync_failures: Counter::default(),
            stored_entries: Counter::default(),
            stored_junk: Counter::default(),
            stored_bytes: Counter::default(),
            tail: U64Gauge::default(),
            sealed_epoch: U64Gauge::default(),
            trim_mark: U64Gauge::default(),
            entries: U64Gauge::default(),
            junk: U64Gauge::default(),
            corrupt: U64Gauge::default(),
            segments: U64Gauge::default(),
            segment_size: U64Gauge::default(),
            used: U64Gauge::default(),
            disk_free: U64Gauge::default(),
            disk_total: U64Gauge::default(),
            full: U64Gauge::default(),
            poisoned: U64Gauge::default(),
            pending: U64Gauge::default(),
            rollovers: Counter::default(),
            spare_waits: Counter::default(),
            created_on_loop: Counter::default(),
        }
    }

    fn register(&self, reg: &mut Registry) {
        let r = reg.sub_registry_with_prefix("unit");
        r.register_with_unit(
            "sync_duration",
            "Time of one durable sync (fdatasync of the segments written since the last)",
            MetricUnit::Seconds,
            self.sync_duration.clone(),
        );
        r.register(
            "sync_batch_records",
            "Records (entries, junk, seal and trim records) one sync made durable",
            self.sync_batch.clone(),
        );
        let counters = [
            (
                "sync_failures",
                "Syncs that failed (each poisons the unit)",
                &self.sync_failures,
            ),
            (
                "stored_entries",
                "Data records appended (writes and repairs)",
                &self.stored_entries,
            ),
            (
                "stored_junk",
                "Junk records appended (fills)",
                &self.stored_junk,
            ),
            (
                "segment_rollovers",
                "New segments begun while serving",
                &self.rollovers,
            ),
            (
                "segment_spare_waits",
                "Rollovers that waited on the event loop for the segment prepared ahead (it was not ready yet)",
                &self.spare_waits,
            ),
            (
                "segment_created_on_loop",
                "Rollovers that created and preallocated the segment on the event loop (no segment prepared ahead, e.g. the disk was full)",
                &self.created_on_loop,
            ),
        ];
        for (name, help, c) in counters {
            r.register(name, help, c.clone());
        }
        r.register_with_unit(
            "stored",
            "Payload bytes of the data records appended",
            MetricUnit::Bytes,
            self.stored_bytes.clone(),
        );
        let gauges = [
            (
                "tail",
                "One past the highest address written (0: none)",
                &self.tail,
            ),
            (
                "sealed_epoch",
                "Requests below this epoch are refused",
                &self.sealed_epoch,
            ),
            (
                "trim_mark",
                "Addresses below this answer trimmed",
                &self.trim_mark,
            ),
            ("entries", "Data records held (not trimmed)", &self.entries),
            ("junk", "Junk records (holes) held", &self.junk),
            (
                "corrupt",
                "Records that fail their checksum, never served",
                &self.corrupt,
            ),
            ("segments", "Segment files open", &self.segments),
            (
                "full",
                "1 if the last append failed for lack of space",
                &self.full,
            ),
            (
                "poisoned",
                "1 if a sync failed and the unit accepts no writes",
                &self.poisoned,
            ),
            (
                "pending_replies",
                "Replies waiting for a sync",
                &self.pending,
            ),
        ];
        for (name, help, g) in gauges {
            r.register(name, help, g.clone());
        }
        let bytes = [
            (
                "segment_size",
                "Size of each segment file",
                &self.segment_size,
            ),
            ("used", "Bytes of records in the segments", &self.used),
            (
                "disk_free",
                "Free bytes of the data directory's file system (for unprivileged users)",
                &self.disk_free,
            ),
            (
                "disk_total",
                "Size of the data directory's file system",
                &self.disk_total,
            ),
        ];
        for (name, help, g) in bytes {
            r.register_with_unit(name, help, MetricUnit::Bytes, g.clone());
        }
    }
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
    metrics: UnitMetrics,
    health: Arc<Health>,
    data_dir: PathBuf,
    /// The sync in flight: when it started, and the records it covers.
    sync_started: Option<(Instant, u64)>,
    /// Records appended (with seal/trim records) when the last sync started.
    synced_records: u64,
    /// Appends when the stored counters were last brought up to date.
    counted: Appends,
    /// Segment rollovers when their counters were last brought up to date.
    counted_segments: SegmentStats,
}

impl StorageService {
    /// The unit inside.
    pub fn unit(&self) -> &Unit<MmapStore> {
        &self.unit
    }

    /// Samples the unit's state into the gauges and readiness.
    fn refresh_metrics(&mut self) {
        let (i, m) = (self.unit.info(), &self.metrics);
        for (g, v) in [
            (&m.tail, i.tail),
            (&m.sealed_epoch, i.sealed_epoch),
            (&m.trim_mark, i.trim_mark),
            (&m.entries, i.entries),
            (&m.junk, i.junk),
            (&m.corrupt, i.corrupt),
            (&m.segments, u64::from(i.segments)),
            (&m.segment_size, i.segment_size_bytes),
            (&m.used, i.used_bytes),
            (&m.full, u64::from(self.unit.full())),
            (&m.poisoned, u64::from(self.unit.poisoned().is_some())),
            (&m.pending, self.unit.pending_replies() as u64),
        ] {
            g.set(v);
        }
        if let Some((free, total)) = metrics::disk_space(&self.data_dir) {
            m.disk_free.set(free);
            m.disk_total.set(total);
        }
        let a = self.unit.appends();
        m.stored_entries.inc_by(a.entries - self.counted.entries);
        m.stored_junk.inc_by(a.junk - self.counted.junk);
        m.stored_bytes.inc_by(a.bytes - self.counted.bytes);
        self.counted = a;
        let seg = self.unit.store().segment_stats();
        let seen = self.counted_segments;
        m.rollovers.inc_by(seg.rollovers - seen.rollovers);
        m.spare_waits.inc_by(seg.spare_waits - seen.spare_waits);
        m.created_on_loop
            .inc_by(seg.created_on_loop - seen.created_on_loop);
        self.counted_segments = seg;
        match self.unit.poisoned() {
            Some(why) => self.health.set_ready(false, &format!("poisoned: {why}")),
            None if self.unit.full() => self
                .health
                .set_ready(true, "serving reads; full: writes are refused"),
            None => self.health.set_ready(true, "serving"),
        }
    }

    /// Records appended so far, data, junk and meta alike (what a sync covers).
    fn records(&self) -> u64 {
        let a = self.unit.appends();
        a.entries + a.junk + self.unit.meta_records()
    }

    fn reap_syncs(&mut self) {
        while let Some((lsn, result)) = self.syncer.poll_done() {
            self.syncs += 1;
            if let Some((at, records)) = self.sync_started.take() {
                let m = &self.metrics;
                m.sync_duration.observe(at.elapsed().as_secs_f64());
                m.sync_batch.observe(records as f64);
            }
            if let Err(e) = &result {
                self.metrics.sync_failures.inc();
                trex_net::log_line!("ERROR", "sync failed: {e}; the unit is poisoned and refuses writes from now on; restart it");
            }
            self.unit.on_synced(lsn, result);
        }
    }
}

/// The least role each storage-unit request needs (docs/security.md): sealing
/// and trimming change what the whole log serves, so they need an admin (or a
/// node: the sequencer's failure detector); a client may write, read, fill
/// holes, repair damaged records it reads, and ask for the unit's state.
fn needs(opcode: u8) -> Role {
    match Opcode::from_u8(opcode) {
        Some(Opcode::Seal | Opcode::Trim) => Role::Admin,
        Some(Opcode::NodeInfo) => Role::Unmapped,
        _ => Role::Client,
    }
}

impl Service for StorageService {
    fn authorize(&self, role: Role, header: &Header, _body: &[u8]) -> Result<(), String> {
        let name = Opcode::from_u8(header.opcode).map_or("this request", |o| o.name());
        trex_net::tls::check(role, needs(header.opcode), name)
    }

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
            let records = self.records();
            self.sync_started = Some((Instant::now(), records - self.synced_records));
            self.synced_records = records;
            self.syncer.submit(job);
            // A job with nothing to sync completes at once.
            self.reap_syncs();
        }
    }

    fn busy(&self) -> bool {
        self.unit.syncing() || self.unit.pending_replies() > 0
    }

    fn periodic_timers(&self) -> Vec<(Duration, u64)> {
        vec![
            (STATS_EVERY, STATS_TIMER),
            (METRICS_EVERY, METRICS_TIMER),
            (SCRUB_EVERY, SCRUB_TIMER),
        ]
    }

    fn on_timer(&mut self, id: u64, _now: Instant) {
        if id == METRICS_TIMER {
            return self.refresh_metrics();
        }
        if id == SCRUB_TIMER {
            self.unit.scrub(SCRUB_BYTES);
            return;
        }
        let (frames, syncs) = (
            self.frames - self.last_stats.0,
            self.syncs - self.last_stats.1,
        );
        let seg = self.unit.store().segment_stats();
        if frames > 0 {
            let i = self.unit.info();
            trex_net::log_line!(
                "INFO",
                "last {}s: {} requests, {} syncs; tail {}, {} entries, {} segments; {} rollovers so far ({} waited for the segment prepared ahead, {} created on the loop)",
                STATS_EVERY.as_secs(),
                frames,
                syncs,
                i.tail,
                i.entries,
                i.segments,
                seg.rollovers,
                seg.spare_waits,
                seg.created_on_loop
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
        build: opts.build,
    };
    let (mut unit, stats) = Unit::open(store, cfg)?;
    {
        let s = unit_store_report(&unit);
        for note in &s.notes {
            trex_net::log_line!("WARN", "recovery: {note}");
        }
        trex_net::log_line!(
            "INFO",
            "recovered {} in {:.1}s: {} records ({} corrupt, {} of unknown address; {} damaged seal/trim records; {} duplicates) from {} indexed + {} scanned segments; tail {}, sealed epoch {}, trim mark {}",
            opts.data_dir.display(),
            started.elapsed().as_secs_f64(),
            stats.records,
            stats.corrupt,
            stats.unattributed,
            stats.corrupt_meta,
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
    let health = Arc::new(Health::default());
    let mut el = EventLoop::bind(opts.listen, opts.limits, |registry, waker| {
        let (syncer, how) = Syncer::detect(registry, service_token(SYNC_TOKEN), waker);
        trex_net::log_line!("INFO", "{how}");
        unit.set_io_uring(syncer.is_uring());
        let mut svc = StorageService {
            unit,
            syncer,
            frames: 0,
            syncs: 0,
            last_stats: (0, 0),
            was_full: false,
            metrics: UnitMetrics::new(),
            health: health.clone(),
            data_dir: opts.data_dir.clone(),
            sync_started: None,
            synced_records: 0,
            counted: Appends::default(),
            counted_segments: SegmentStats::default(),
        };
        svc.synced_records = svc.records();
        svc.refresh_metrics();
        Ok(svc)
    })
    .map_err(|e| {
        format!(
            "cannot listen on {}: {e}; is another process using the port?",
            opts.listen
        )
    })?;
    if let Some(tls) = &opts.tls {
        el.enable_tls(tls.clone());
    }
    el.stop_on_signals()
        .map_err(|e| format!("cannot install signal handling: {e}"))?;
    el.set_health(health.clone());
    if let Some(m) = &opts.metrics {
        let mut reg = metrics::registry(&opts.build);
        el.enable_metrics(&mut reg);
        el.service().metrics.register(&mut reg);
        let at = metrics::serve(m.listen, reg, health)
            .map_err(|e| format!("cannot serve metrics on {}: {e}", m.listen))?;
        trex_net::log_line!(
            "INFO",
            "metrics on http://{at}/metrics (and /healthz, /readyz)"
        );
    }
    trex_net::log_line!(
        "INFO",
        "storage unit listening on {} (data in {})",
        el.local_addr(),
        opts.data_dir.display()
    );
    trex_net::util::sd_notify("READY=1\nSTATUS=storage unit serving");
    let svc = el.run().map_err(|e| format!("event loop failed: {e}"))?;
    trex_net::util::sd_notify("STOPPING=1");
    trex_net::log_line!("INFO", "stopped cleanly; tail {}", svc.unit().tail());
    Ok(())
}

fn unit_store_report(unit: &Unit<MmapStore>) -> crate::storage::mmap::OpenReport {
    unit.store().report.clone()
}
