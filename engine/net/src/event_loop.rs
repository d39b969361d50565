//! The hand-rolled `mio` event loop every role runs: one listener, connections
//! with bounded buffers, many requests in flight per connection, replies
//! coalesced into one write per connection per loop turn, timers, a `Waker` for
//! work finished on other threads, back-pressure, a connection cap, and a clean
//! shutdown on SIGINT/SIGTERM (or a [`StopHandle`]).
//!
//! The loop only moves frames. What a frame means is the [`Service`]'s business:
//! it gets every whole, checksum-verified frame and must eventually produce
//! exactly one reply for it (matched by the connection token, [`ReplyTo`]).
//! A frame the loop cannot parse gets an error reply where possible, and that
//! connection is closed once the reply is flushed; all others carry on.

use crate::metrics::{ErrorKind, Health, LoopMetrics};
use crate::reply::{error_frame, reply_header, Reply, ReplyTo};
use crate::tls::{Role, TlsConfig, Transport};
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trex_wire::{
    check_frame, parse_frame, ErrorCode, FrameError, Header, Opcode, FLAG_ERROR, HEADER_LEN,
    MAX_BODY_LEN,
};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);
/// First token a service may register its own sources under (up to 15).
pub const SERVICE_TOKEN_BASE: usize = 3;
const FIRST_CONN: usize = 16;
const READ_CHUNK: usize = 64 * 1024;
const ACCEPT_BACKOFF_TIMER: u64 = u64::MAX;
/// The loop's own timer: connection deadlines and the buffer budget.
const SWEEP_TIMER: u64 = u64::MAX - 1;
/// How often connection deadlines are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// At the connection limit, a connection idle (or stuck in one frame) for at
/// least this long may be closed to make room for a new one.
const EVICT_AFTER: Duration = Duration::from_secs(1);
/// At the connection limit, a connection that has not finished its first frame
/// (or TLS handshake) this long after it began may be closed to make room: a
/// client sends a whole request at once, so only a trickle takes this long.
const UNPROVEN_GRACE: Duration = Duration::from_millis(100);
/// Bytes one connection may be read in one loop turn; the rest waits for the
/// next turn, so one fast sender cannot hold the loop.
const READ_CONN_TURN: usize = 1 << 20;
/// Bytes all connections together may be read in one loop turn: a turn stays
/// short (timers such as consensus heartbeats fire between turns) however many
/// connections are sending at once, e.g. a flood of large frames.
const READ_TURN_BUDGET: usize = 8 << 20;

/// What runs inside the loop.
pub trait Service {
    /// A whole frame with verified checksums arrived. Unless the service answers
    /// [`Flow::NoReply`], exactly one reply to `to` must follow through
    /// [`Service::poll_reply`], now or later.
    fn on_frame(&mut self, to: ReplyTo, header: &Header, body: &[u8]) -> Flow;
    /// The next reply ready to send.
    fn poll_reply(&mut self) -> Option<Reply>;
    /// A source the service registered under its own token is ready.
    fn on_event(&mut self, _token: Token) {}
    /// The waker fired (another thread finished something).
    fn on_wake(&mut self) {}
    /// A timer the service asked for is due.
    fn on_timer(&mut self, _id: u64, _now: Instant) {}
    /// Periodic timers, asked once when the loop starts: `(every, id)`. The
    /// loop re-arms each after it fires.
    fn periodic_timers(&self) -> Vec<(Duration, u64)> {
        Vec::new()
    }
    /// Called once per loop turn after events: start background work here.
    fn tick(&mut self) {}
    /// Work in flight that a clean shutdown must wait for.
    fn busy(&self) -> bool {
        false
    }
    /// Whether a connection whose certificate grants `role` may make this
    /// request; `Err` holds the `not-authorized` message (say what the role
    /// is, what the request needs, and where to read more:
    /// [`crate::tls::refusal`]). Only asked with TLS on (never for
    /// [`Role::Anyone`]); the loop answers a refusal itself, and the
    /// connection stays open. The default refuses nothing.
    fn authorize(&self, _role: Role, _header: &Header, _body: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// What a service wants after a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// One reply will follow; keep reading.
    Reply,
    /// A one-way message (e.g. between consensus nodes): no reply follows.
    NoReply,
    /// A protocol violation: its error reply follows, then the connection closes.
    Close,
}

/// Limits of the loop.
#[derive(Clone, Copy, Debug)]
pub struct LoopConfig {
    /// Connections served at once; more are refused with an error frame.
    pub max_connections: usize,
    /// Requests in flight per connection before it stops being read.
    pub max_inflight: usize,
    /// Unsent reply bytes per connection before it stops being read.
    pub write_limit: usize,
    /// How long a shutdown waits for in-flight work.
    pub shutdown_grace: Duration,
    /// A connection with nothing in flight and nothing buffered that sends
    /// nothing for this long is closed (clients reconnect on their next call).
    pub idle_timeout: Duration,
    /// Once a frame's first byte has arrived, the whole frame must arrive
    /// within this time, or the connection is closed (a stalled or
    /// trickling sender holds no memory and no connection slot for longer).
    pub frame_timeout: Duration,
    /// Bytes of read buffers beyond the first 64 KiB of each connection
    /// (frames being received), summed over all connections. A connection
    /// whose frame would grow the sum past it stops being read until others
    /// finish or close; with `frame_timeout`, this bounds what half-sent
    /// frames can hold.
    pub buffer_budget: usize,
}

impl Default for LoopConfig {
    fn default() -> LoopConfig {
        LoopConfig {
            max_connections: 1024,
            max_inflight: 1024,
            write_limit: 32 << 20,
            shutdown_grace: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            frame_timeout: Duration::from_secs(10),
            buffer_budget: 128 << 20,
        }
    }
}

/// Stops a running loop from another thread.
#[derive(Clone)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    /// Asks the loop to shut down cleanly.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

struct Conn {
    stream: Transport,
    /// What the peer may do: `Anyone` without TLS; with TLS, `None` until the
    /// handshake has named the peer's certificate.
    role: Option<Role>,
    gen: u32,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    inflight: usize,
    /// No more reads: EOF, a protocol error, or shutdown.
    read_done: bool,
    /// Close once everything queued is written.
    close_after_flush: bool,
    paused: bool,
    /// A protocol error to send after every reply still owed (then close).
    last_words: Option<Vec<u8>>,
    /// Bytes of replies produced for this connection, not yet in `wbuf`.
    owed: usize,
    /// When a byte last came in or a reply went out.
    last_active: Instant,
    /// When the first byte of the frame being received arrived (None: no
    /// partial frame buffered).
    frame_since: Option<Instant>,
    /// Not read because its frame would grow the buffers past the budget.
    starved: bool,
    /// In [`EventLoop::deferred`]: read again next turn.
    deferred: bool,
    /// With metrics: requests awaiting their reply (request id, opcode,
    /// arrival), oldest first.
    started: VecDeque<(u64, u8, Instant)>,
    /// A whole frame arrived and was accepted on it: a client (or peer) that
    /// speaks the protocol, kept over connections that never finished one
    /// when room must be made ([`EventLoop::evict_one`]).
    proven: bool,
    /// A consensus peer's link (a `peer` frame was accepted on it): the
    /// cluster's own traffic, never closed to make room for a client.
    peer: bool,
}

impl Conn {
    /// Nothing in flight, nothing buffered either way.
    fn idle(&self) -> bool {
        self.rstart == self.rend
            && self.inflight == 0
            && self.owed == 0
            && self.wpos == self.wbuf.len()
    }
}

/// Bytes of a read buffer counted against [`LoopConfig::buffer_budget`].
fn over_chunk(rbuf: &[u8]) -> usize {
    rbuf.len().saturating_sub(READ_CHUNK)
}

/// Connections closed or refused by the loop's own rules, logged once per
/// interval with a count (a flood costs one line per rule per 10 s).
struct Refusals {
    at_limit: crate::util::Throttle,
    evicted: crate::util::Throttle,
    slow_frame: crate::util::Throttle,
    idle: crate::util::Throttle,
    tls: crate::util::Throttle,
}

/// The loop, owning its service.
pub struct EventLoop<S: Service> {
    poll: Poll,
    listener: TcpListener,
    local: SocketAddr,
    conns: Vec<Option<Conn>>,
    gens: Vec<u32>,
    free: Vec<usize>,
    live: usize,
    service: S,
    cfg: LoopConfig,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Period of each of the service's timers, by id.
    periods: Vec<(u64, Duration)>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    signals: Option<OwnedFd>,
    accept_paused: bool,
    dirty: Vec<usize>,
    /// Replies taken from the service while frames were dispatched, with
    /// whether they were counted in their connection's `owed`.
    outbox: Vec<(Reply, bool)>,
    /// When the current loop turn began (after `poll` returned): the time
    /// connection activity is stamped with, one clock read per turn rather
    /// than one per read or reply.
    turn: Instant,
    /// Σ over connections of their read buffer beyond 64 KiB.
    buffered: usize,
    /// Bytes read from connections in this turn ([`READ_TURN_BUDGET`]).
    turn_read: usize,
    /// Connections whose reading was cut short by a budget, read again next
    /// turn (edge-triggered: no new event would come for what is waiting).
    deferred: Vec<usize>,
    refusals: Refusals,
    /// Beaten every turn; reported by the metrics listener.
    health: Arc<Health>,
    /// Connection, request and error metrics, when the node serves them.
    metrics: Option<LoopMetrics>,
    /// TLS on every accepted connection, and how certificates map to roles.
    tls: Option<TlsConfig>,
}

impl<S: Service> EventLoop<S> {
    /// Binds `addr` and builds the service with access to the registry (for its
    /// own sources, under tokens from [`SERVICE_TOKEN_BASE`]) and the waker.
    pub fn bind(
        addr: SocketAddr,
        cfg: LoopConfig,
        make: impl FnOnce(&Registry, Arc<Waker>) -> io::Result<S>,
    ) -> io::Result<EventLoop<S>> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let service = make(poll.registry(), waker.clone())?;
        Ok(EventLoop {
            poll,
            listener,
            local,
            conns: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            live: 0,
            service,
            cfg,
            timers: BinaryHeap::new(),
            periods: Vec::new(),
            waker,
            stop: Arc::new(AtomicBool::new(false)),
            signals: None,
            accept_paused: false,
            dirty: Vec::new(),
            outbox: Vec::new(),
            turn: Instant::now(),
            buffered: 0,
            turn_read: 0,
            deferred: Vec::new(),
            refusals: Refusals {
                at_limit: crate::util::Throttle::new(Duration::from_secs(10)),
                evicted: crate::util::Throttle::new(Duration::from_secs(10)),
                slow_frame: crate::util::Throttle::new(Duration::from_secs(10)),
                idle: crate::util::Throttle::new(Duration::from_secs(10)),
                tls: crate::util::Throttle::new(Duration::from_secs(10)),
            },
            health: Arc::new(Health::default()),
            metrics: None,
            tls: None,
        })
    }

    /// Beats `health` every turn (and marks it stopped when the loop returns),
    /// so that `/healthz` tells whether this loop is alive.
    pub fn set_health(&mut self, health: Arc<Health>) {
        self.health = health;
    }

    /// Counts connections, requests (and their latency) by operation, and
    /// errors by kind, into metrics registered in `reg`.
    pub fn enable_metrics(&mut self, reg: &mut prometheus_client::registry::Registry) {
        let m = LoopMetrics::default();
        m.register(reg);
        self.metrics = Some(m);
    }

    /// Serves every connection over TLS with `config` (its server side
    /// requires a client certificate), and answers each request according to
    /// the role its `roles` give the peer's certificate
    /// ([`Service::authorize`]). With [`EventLoop::stop_on_signals`], SIGHUP
    /// reloads the certificate files.
    pub fn enable_tls(&mut self, config: TlsConfig) {
        crate::log_line!(
            "INFO",
            "mutual TLS on every connection: certificate {}, CA {} (peers need a certificate of that CA; SIGHUP reloads both)",
            config.files.cert.display(),
            config.files.ca.display()
        );
        self.tls = Some(config);
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A handle that stops the loop from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            stop: self.stop.clone(),
            waker: self.waker.clone(),
        }
    }

    /// The service (for inspection before or after running).
    pub fn service(&self) -> &S {
        &self.service
    }

    /// Shuts down cleanly on SIGINT or SIGTERM, and reloads the TLS
    /// certificates on SIGHUP ([`EventLoop::enable_tls`]). Blocks the three
    /// signals in the calling thread; call it before spawning other threads so
    /// they inherit the mask and the signals are only seen here.
    pub fn stop_on_signals(&mut self) -> io::Result<()> {
        let set = block_shutdown_signals()?;
        // SAFETY: set is a valid sigset; signalfd returns a new descriptor or -1.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        self.poll.registry().register(
            &mut SourceFd(&fd.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        self.signals = Some(fd);
        Ok(())
    }

    /// Runs until stopped; returns the service after a clean shutdown.
    pub fn run(mut self) -> io::Result<S> {
        let mut events = Events::with_capacity(1024);
        self.periods = self
            .service
            .periodic_timers()
            .into_iter()
            .map(|(every, id)| (id, every))
            .collect();
        for (id, every) in self.periods.clone() {
            self.timers.push(Reverse((Instant::now() + every, id)));
        }
        self.timers
            .push(Reverse((Instant::now() + SWEEP_EVERY, SWEEP_TIMER)));
        let mut deadline: Option<Instant> = None;
        let mut again = false;
        loop {
            let now = Instant::now();
            self.health.beat(now);
            let mut timeout = self
                .timers
                .peek()
                .map(|Reverse((t, _))| t.saturating_duration_since(now));
            if deadline.is_some() {
                timeout = Some(timeout.map_or(Duration::from_millis(50), |t| {
                    t.min(Duration::from_millis(50))
                }));
            }
            if again || !self.deferred.is_empty() {
                timeout = Some(Duration::ZERO); // a paused or cut-short connection can go on
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.health.set_stopped();
                return Err(e);
            }
            self.turn = Instant::now();
            self.turn_read = 0;
            // Connections cut short last turn go first: they waited longest.
            for idx in std::mem::take(&mut self.deferred) {
                if let Some(Some(c)) = self.conns.get_mut(idx) {
                    c.deferred = false;
                }
                self.read_conn(idx);
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => self.service.on_wake(),
                    SIGNALS => match self.read_signal() {
                        Some("SIGHUP") => self.reload_tls(),
                        Some(sig) => {
                            crate::log_line!("INFO", "received {sig}; shutting down cleanly");
                            self.stop.store(true, Ordering::SeqCst);
                        }
                        None => {}
                    },
                    Token(t) if t < FIRST_CONN => self.service.on_event(ev.token()),
                    Token(t) => {
                        let idx = t - FIRST_CONN;
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read_conn(idx);
                        }
                        if ev.is_writable() || ev.is_error() {
                            self.dirty.push(idx);
                        }
                    }
                }
            }
            if self.stop.load(Ordering::SeqCst) && deadline.is_none() {
                deadline = Some(Instant::now() + self.cfg.shutdown_grace);
                self.begin_shutdown();
            }
            self.fire_timers();
            // Resumed connections first, so the replies and sync work their
            // buffered frames produce go out in this same turn.
            self.resume_paused();
            self.service.tick();
            self.route_replies();
            self.flush_dirty();
            again = self
                .conns
                .iter()
                .flatten()
                .any(|c| c.paused && under_limits(c, &self.cfg));
            if let Some(d) = deadline {
                let pending_out = self
                    .conns
                    .iter()
                    .flatten()
                    .any(|c| c.wpos < c.wbuf.len() || c.stream.pending());
                if (!self.service.busy() && !pending_out) || Instant::now() >= d {
                    if self.service.busy() {
                        crate::log_line!(
                            "WARN",
                            "shutdown grace period over with work still in flight"
                        );
                    }
                    self.health.set_stopped();
                    return Ok(self.service);
                }
            }
        }
    }

    fn read_signal(&mut self) -> Option<&'static str> {
        let fd = self.signals.as_ref()?.as_raw_fd();
        // SAFETY: zeroed siginfo is valid; read fills at most its size.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading into a properly sized local struct.
        let n = unsafe { libc::read(fd, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
        (n as usize == size).then_some(match info.ssi_signo as i32 {
            libc::SIGINT => "SIGINT",
            libc::SIGHUP => "SIGHUP",
            _ => "SIGTERM",
        })
    }

    /// SIGHUP: reads the certificate files again; new connections (accepted
    /// and outgoing) use them, open ones keep their session. A failed reload
    /// keeps the old certificates.
    fn reload_tls(&mut self) {
        let Some(current) = &self.tls else {
            crate::log_line!("INFO", "received SIGHUP; no TLS certificates to reload");
            return;
        };
        match current.reload() {
            Ok(fresh) => {
                crate::tls::set_client_config(Some(fresh.client.clone()));
                self.tls = Some(fresh);
                crate::log_line!("INFO", "received SIGHUP; reloaded the TLS certificates");
            }
            Err(e) => crate::log_line!(
                "ERROR",
                "received SIGHUP; kept the old TLS certificates: {e}"
            ),
        }
    }

    fn begin_shutdown(&mut self) {
        let _ = self.poll.registry().deregister(&mut self.listener);
        for c in self.conns.iter_mut().flatten() {
            c.read_done = true;
            c.close_after_flush = true;
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if id == SWEEP_TIMER {
                self.timers.push(Reverse((now + SWEEP_EVERY, SWEEP_TIMER)));
                self.sweep(now);
            } else if id == ACCEPT_BACKOFF_TIMER {
                let r =
                    self.poll
                        .registry()
                        .register(&mut self.listener, LISTENER, Interest::READABLE);
                self.accept_paused = r.is_err();
                if !self.accept_paused {
                    self.accept();
                }
            } else {
                if let Some((_, every)) = self.periods.iter().find(|(i, _)| *i == id) {
                    self.timers.push(Reverse((now + *every, id)));
                }
                self.service.on_timer(id, now);
            }
        }
    }

    fn accept(&mut self) {
        if self.accept_paused || self.stop.load(Ordering::SeqCst) {
            return;
        }
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if let Some(m) = &self.metrics {
                        m.error(ErrorKind::Accept);
                    }
                    // Out of descriptors or similar: stop accepting for a moment
                    // instead of spinning on a listener that stays readable.
                    crate::log_line!("WARN", "accept failed ({e}); pausing accepts for 100ms");
                    let _ = self.poll.registry().deregister(&mut self.listener);
                    self.accept_paused = true;
                    let at = Instant::now() + Duration::from_millis(100);
                    self.timers.push(Reverse((at, ACCEPT_BACKOFF_TIMER)));
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        if self.live >= self.cfg.max_connections && !self.evict_one() {
            // No request was read: the reply names none.
            let unread = Header {
                opcode: Opcode::Error as u8,
                ..Header::default()
            };
            let h = reply_header(&unread, FLAG_ERROR, 0, 0);
            let msg = format!(
                "server is at its limit of {} connections; retry later or raise --max-connections",
                self.cfg.max_connections
            );
            // Not to a TLS peer: it expects a handshake, and would take plain
            // bytes for a broken server; the close alone tells it to retry.
            if self.tls.is_none() {
                let _ = stream.write(&error_frame(&h, ErrorCode::TooManyConnections, &msg));
            }
            if let Some(m) = &self.metrics {
                m.error(ErrorKind::Refused);
            }
            if let Some(n) = self.refusals.at_limit.hit() {
                crate::log_line!(
                    "WARN",
                    "refused {n} connection(s) at the limit of {} (the latest from {peer}); none was idle or stuck long enough to close instead",
                    self.cfg.max_connections
                );
            }
            return;
        }
        let mut stream = match &self.tls {
            None => Transport::plain(stream),
            Some(config) => match Transport::server(stream, config.server.clone()) {
                Ok(t) => t,
                Err(e) => {
                    crate::log_line!("WARN", "cannot start TLS with {peer}: {e}");
                    return;
                }
            },
        };
        let role = (!stream.is_tls()).then_some(Role::Anyone);
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.gens.push(0);
            self.conns.len() - 1
        });
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut stream.tcp, Token(FIRST_CONN + idx), interest)
        {
            crate::log_line!("WARN", "cannot register connection from {peer}: {e}");
            self.free.push(idx);
            return;
        }
        self.live += 1;
        self.conns[idx] = Some(Conn {
            stream,
            role,
            gen: self.gens[idx],
            rbuf: vec![0; READ_CHUNK],
            rstart: 0,
            rend: 0,
            wbuf: Vec::new(),
            wpos: 0,
            inflight: 0,
            read_done: false,
            close_after_flush: false,
            paused: false,
            last_words: None,
            owed: 0,
            last_active: self.turn,
            // A TLS handshake must finish within the frame timeout, as a
            // frame must: a peer that stalls in it holds no slot for longer.
            frame_since: role.is_none().then_some(self.turn),
            starved: false,
            deferred: false,
            started: VecDeque::new(),
            proven: false,
            peer: false,
        });
        if let Some(m) = &self.metrics {
            m.accepted(self.live);
        }
        // Edge-triggered: data may already be waiting.
        self.read_conn(idx);
    }

    fn close(&mut self, idx: usize) {
        if let Some(mut c) = self.conns.get_mut(idx).and_then(Option::take) {
            self.buffered -= over_chunk(&c.rbuf);
            // A TLS alert (why the handshake was refused) goes out if it can.
            let _ = c.stream.flush();
            let _ = self.poll.registry().deregister(&mut c.stream.tcp);
            self.gens[idx] = self.gens[idx].wrapping_add(1);
            self.free.push(idx);
            self.live -= 1;
            if let Some(m) = &self.metrics {
                m.open(self.live);
            }
        }
    }

    fn dispatch_buffered(&mut self, idx: usize) {
        let EventLoop {
            conns,
            service,
            cfg,
            dirty,
            outbox,
            buffered,
            metrics,
            ..
        } = self;
        if let Some(Some(c)) = conns.get_mut(idx) {
            let to = (u64::from(c.gen) << 32) | idx as u64;
            if dispatch(c, to, service, cfg, dirty, outbox, buffered, metrics) > 0 {
                c.frame_since = (c.rend > c.rstart).then(Instant::now);
            }
        }
    }

    fn read_conn(&mut self, idx: usize) {
        let EventLoop {
            conns,
            service,
            cfg,
            dirty,
            outbox,
            buffered,
            metrics,
            turn,
            tls,
            turn_read,
            deferred,
            ..
        } = self;
        let turn = *turn;
        let tls = tls.as_ref();
        let mut tls_failed = None;
        let Some(Some(c)) = conns.get_mut(idx) else {
            return;
        };
        let to = (u64::from(c.gen) << 32) | idx as u64;
        let mut fatal = false;
        let mut got = 0;
        while !c.read_done && !c.paused && !c.starved {
            if got >= READ_CONN_TURN || *turn_read >= READ_TURN_BUDGET {
                // More may wait: read it next turn, after timers and others.
                if !c.deferred {
                    c.deferred = true;
                    deferred.push(idx);
                }
                break;
            }
            if c.rend == c.rbuf.len() {
                make_room(c, buffered, cfg.buffer_budget);
                if c.rend == c.rbuf.len() {
                    // The frame would grow the buffers past the budget: read
                    // no more from it until others finish (the sweep retries).
                    c.starved = true;
                    break;
                }
            }
            match c.stream.read(&mut c.rbuf[c.rend..]) {
                Ok(0) => c.read_done = true,
                Ok(n) => {
                    c.rend += n;
                    c.last_active = turn;
                    got += n;
                    *turn_read += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // A refused handshake or a plain client; not a reset.
                    let refused = matches!(
                        e.kind(),
                        io::ErrorKind::InvalidData | io::ErrorKind::Unsupported
                    );
                    if c.stream.is_tls() && refused {
                        tls_failed = Some(e);
                    }
                    fatal = true;
                    break;
                }
            }
            if c.role.is_none() {
                if let (Some(cert), Some(config)) = (c.stream.peer_certificate(), tls) {
                    c.role = Some(config.roles.role_of(cert).0);
                    if c.rend == c.rstart {
                        c.frame_since = None;
                    }
                }
            }
            if dispatch(c, to, service, cfg, dirty, outbox, buffered, metrics) > 0 {
                c.frame_since = None;
            }
            if c.rend > c.rstart && c.frame_since.is_none() {
                c.frame_since = Some(c.last_active);
            }
        }
        let drained =
            c.read_done && c.inflight == 0 && c.wpos == c.wbuf.len() && c.last_words.is_none();
        if fatal && tls_failed.is_none() {
            if let Some(m) = &self.metrics {
                m.error(ErrorKind::Io);
            }
        }
        if let Some(e) = tls_failed {
            self.refuse_tls(idx, e);
        }
        if fatal || drained {
            self.close(idx);
        }
    }

    /// A TLS connection failed before or during the handshake (a peer without
    /// a certificate of the cluster's CA, or not speaking TLS at all). A peer
    /// that sent a plain frame gets a plain `not-authorized` error frame, so a
    /// client without TLS learns why; either way the refusal is logged, once
    /// per interval with a count.
    fn refuse_tls(&mut self, idx: usize, e: io::Error) {
        let Some(Some(c)) = self.conns.get_mut(idx) else {
            return;
        };
        let plain = e.kind() == io::ErrorKind::Unsupported;
        if plain {
            let unread = Header {
                opcode: Opcode::Error as u8,
                ..Header::default()
            };
            let h = reply_header(&unread, FLAG_ERROR, 0, 0);
            let msg = "this server requires TLS with a certificate signed by the cluster CA; connect with --tls-dir DIR (or TREX_TLS_DIR) holding your certificate (docs/security.md)";
            let _ = c
                .stream
                .tcp
                .write(&error_frame(&h, ErrorCode::NotAuthorized, msg));
        }
        let peer = c.stream.tcp.peer_addr().map(|a| a.to_string());
        if let Some(m) = &self.metrics {
            m.error(ErrorKind::Tls);
        }
        if let Some(n) = self.refusals.tls.hit() {
            let why = if plain {
                "sent a plain frame".to_string()
            } else {
                e.to_string()
            };
            crate::log_line!(
                "WARN",
                "refused {n} TLS connection(s) (the latest from {}: {why}); peers need a certificate signed by the cluster CA (docs/security.md)",
                peer.unwrap_or_else(|_| "an unknown address".into())
            );
        }
    }

    /// Makes room for a new connection at the limit. In this order: a
    /// connection that has not finished its first frame (or TLS handshake)
    /// within [`UNPROVEN_GRACE`] of starting it, the one holding the fewest
    /// received bytes (then the oldest); else, oldest first, one idle for at
    /// least [`EVICT_AFTER`]; one stuck in a frame as long. A consensus peer's
    /// link is never chosen: a flood of anonymous connections must not cut the
    /// cluster's own traffic (heartbeats, accepts) and force elections. False
    /// if none qualifies.
    fn evict_one(&mut self) -> bool {
        let now = Instant::now();
        let live = || {
            self.conns
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
                .filter(|(_, c)| !c.peer)
        };
        // Of those, the one that has cost least to receive: closing it costs
        // its sender least to rebuild, and a flood of large half-sent frames
        // is not received again and again.
        let unproven = live()
            .filter(|(_, c)| !c.proven)
            .filter_map(|(i, c)| c.frame_since.map(|t| (i, c.rend - c.rstart, t)))
            .filter(|(_, _, t)| now.duration_since(*t) >= UNPROVEN_GRACE)
            .min_by_key(|(_, held, t)| (*held, *t))
            .map(|(i, _, _)| i);
        let idle = || {
            live()
                .filter(|(_, c)| c.idle() && now.duration_since(c.last_active) >= EVICT_AFTER)
                .min_by_key(|(_, c)| c.last_active)
                .map(|(i, _)| i)
        };
        let stuck = || {
            live()
                .filter_map(|(i, c)| c.frame_since.map(|t| (i, t)))
                .filter(|(_, t)| now.duration_since(*t) >= EVICT_AFTER)
                .min_by_key(|(_, t)| *t)
                .map(|(i, _)| i)
        };
        let Some(victim) = unproven.or_else(idle).or_else(stuck) else {
            return false;
        };
        self.close(victim);
        if let Some(m) = &self.metrics {
            m.error(ErrorKind::Evicted);
        }
        if let Some(n) = self.refusals.evicted.hit() {
            crate::log_line!(
                "INFO",
                "closed {n} idle or stalled connection(s) to make room at the limit of {} connections",
                self.cfg.max_connections
            );
        }
        true
    }

    /// Connection deadlines ([`LoopConfig::frame_timeout`],
    /// [`LoopConfig::idle_timeout`]) and starved connections (read again
    /// while the budget allows).
    fn sweep(&mut self, now: Instant) {
        let (mut slow, mut idle, mut starved) = (Vec::new(), Vec::new(), Vec::new());
        for (i, c) in self.conns.iter().enumerate() {
            let Some(c) = c else { continue };
            // A paused connection waits on this node, not on its sender.
            let late = c
                .frame_since
                .is_some_and(|t| now.duration_since(t) >= self.cfg.frame_timeout);
            if late && !c.paused {
                slow.push(i);
            } else if c.idle()
                && !c.read_done
                && !c.peer
                && now.duration_since(c.last_active) >= self.cfg.idle_timeout
            {
                idle.push(i);
            } else if c.starved {
                starved.push((c.rbuf.len(), i));
            }
        }
        for &i in &slow {
            self.close(i);
        }
        for &i in &idle {
            self.close(i);
        }
        if let Some(m) = &self.metrics {
            m.errors(ErrorKind::SlowFrame, slow.len() as u64);
            m.errors(ErrorKind::IdleTimeout, idle.len() as u64);
        }
        if !slow.is_empty() {
            if let Some(n) = self.refusals.slow_frame.hit() {
                crate::log_line!(
                    "WARN",
                    "closed {n} connection(s) that did not finish a frame within {} of its first byte",
                    crate::util::duration_text(self.cfg.frame_timeout)
                );
            }
        }
        if !idle.is_empty() {
            if let Some(n) = self.refusals.idle.hit() {
                crate::log_line!(
                    "INFO",
                    "closed {n} connection(s) idle for {}",
                    crate::util::duration_text(self.cfg.idle_timeout)
                );
            }
        }
        // Closest to a whole frame first: most likely to finish and free room.
        starved.sort_unstable_by(|a, b| b.cmp(a));
        for (_, i) in starved {
            if let Some(Some(c)) = self.conns.get_mut(i) {
                c.starved = false;
            }
            self.read_conn(i);
        }
    }

    fn route_replies(&mut self) {
        for (r, counted) in std::mem::take(&mut self.outbox) {
            self.deliver(r, counted);
        }
        while let Some(r) = self.service.poll_reply() {
            self.deliver(r, false);
        }
    }

    fn deliver(&mut self, r: Reply, counted: bool) {
        {
            let idx = (r.to & 0xffff_ffff) as usize;
            let gen = (r.to >> 32) as u32;
            let Some(Some(c)) = self.conns.get_mut(idx) else {
                return;
            };
            if c.gen != gen {
                return; // the connection went away; its reply has nowhere to go
            }
            if counted {
                c.owed -= r.frame.len();
            }
            if let Some(m) = &mut self.metrics {
                observe_reply(m, c, &r.frame);
            }
            c.inflight = c.inflight.saturating_sub(1);
            c.last_active = self.turn;
            if c.wpos == c.wbuf.len() {
                c.wbuf.clear();
                c.wpos = 0;
            }
            c.wbuf.extend_from_slice(&r.frame);
            if r.close {
                c.read_done = true;
                c.close_after_flush = true;
            }
            self.dirty.push(idx);
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for idx in dirty.drain(..) {
            let Some(Some(c)) = self.conns.get_mut(idx) else {
                continue;
            };
            if c.inflight == 0 {
                if let Some(words) = c.last_words.take() {
                    c.wbuf.extend_from_slice(&words);
                }
            }
            // TLS records left over from an earlier turn (the socket was full).
            let mut failed = c.stream.flush().is_err();
            while !failed && c.wpos < c.wbuf.len() {
                match c.stream.write(&c.wbuf[c.wpos..]) {
                    Ok(0) => {
                        failed = true;
                        break;
                    }
                    Ok(n) => c.wpos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if c.wpos == c.wbuf.len() {
                c.wbuf.clear();
                c.wpos = 0;
                // Give memory back after a burst of large replies.
                if c.wbuf.capacity() > 4 * READ_CHUNK {
                    c.wbuf.shrink_to(READ_CHUNK);
                }
            }
            // Reads have ended (EOF, protocol error or shutdown) and nothing is owed.
            let done = c.wbuf.is_empty()
                && c.read_done
                && c.inflight == 0
                && c.last_words.is_none()
                && !c.stream.pending();
            if failed {
                if let Some(m) = &self.metrics {
                    m.error(ErrorKind::Io);
                }
            }
            if failed || done {
                self.close(idx);
            }
        }
        self.dirty = dirty;
    }

    fn resume_paused(&mut self) {
        let cfg = self.cfg;
        let mut resume = Vec::new();
        for (idx, c) in self.conns.iter_mut().enumerate() {
            let Some(c) = c else { continue };
            if c.paused && under_limits(c, &cfg) {
                c.paused = false;
                resume.push(idx);
            }
        }
        for idx in resume {
            // Frames already buffered first, then whatever waits in the socket.
            self.dispatch_buffered(idx);
            self.read_conn(idx);
        }
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and every thread
/// it spawns afterwards), so that only the loop's signalfd (or the caller's
/// `sigtimedwait`) sees them. Call it first thing in `main`, before any thread
/// exists.
pub fn block_shutdown_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: plain libc calls on a local, zero-initialised sigset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(set)
    }
}

/// Makes room at the end of the read buffer: compacts consumed bytes away and
/// grows the buffer to fit the frame being received (bounded by the frame limit).
fn make_room(c: &mut Conn, buffered: &mut usize, budget: usize) {
    if c.rstart > 0 {
        c.rbuf.copy_within(c.rstart..c.rend, 0);
        c.rend -= c.rstart;
        c.rstart = 0;
    }
    // Still full after compacting: grow by doubling as bytes actually arrive, up
    // to one whole frame, so a peer that only announces a large frame does not
    // get the memory reserved. (A full buffer of the largest size always holds
    // a whole frame, which dispatch consumes before the next read.) Not past
    // the node's budget for frames being received: then the buffer stays full
    // and the caller stops reading the connection.
    if c.rend == c.rbuf.len() {
        let max = HEADER_LEN + MAX_BODY_LEN as usize + READ_CHUNK;
        let target = (c.rbuf.len() * 2).max(READ_CHUNK).min(max);
        let grow = target - c.rbuf.len();
        if *buffered + grow > budget {
            return;
        }
        *buffered += grow;
        // A fresh zeroed allocation (pages the kernel zeroes as they are
        // first touched) and one copy of what is buffered, rather than
        // writing every new byte: a flood of half-sent large frames grows
        // many buffers, and the loop must stay quick.
        let mut bigger = vec![0u8; target];
        bigger[..c.rend].copy_from_slice(&c.rbuf[..c.rend]);
        c.rbuf = bigger;
    }
}

/// Whether a connection may be read: few enough requests in flight and few
/// enough reply bytes waiting to be sent.
fn under_limits(c: &Conn, cfg: &LoopConfig) -> bool {
    c.inflight < cfg.max_inflight && c.wbuf.len() - c.wpos + c.owed < cfg.write_limit
}

/// With metrics: matches a reply to the request it answers (latency by
/// opcode) and counts error replies by code.
fn observe_reply(m: &mut LoopMetrics, c: &mut Conn, frame: &[u8]) {
    let Some(head) = frame.first_chunk::<HEADER_LEN>() else {
        return;
    };
    let Ok(h) = Header::decode(head) else {
        return;
    };
    if h.is_error() {
        if let Some(code) = frame.get(HEADER_LEN..HEADER_LEN + 2) {
            m.error_reply(u16::from_le_bytes([code[0], code[1]]));
        }
    }
    // Replies mostly come in arrival order: the match is near the front.
    if let Some(i) = c.started.iter().position(|s| s.0 == h.request_id) {
        if let Some((_, op, at)) = c.started.remove(i) {
            m.replied(op, at.elapsed());
        }
    }
}

/// Hands every whole frame in the read buffer to the service; answers and
/// closes on a frame the loop cannot parse.
#[allow(clippy::too_many_arguments)]
fn dispatch<S: Service>(
    c: &mut Conn,
    to: ReplyTo,
    service: &mut S,
    cfg: &LoopConfig,
    dirty: &mut Vec<usize>,
    outbox: &mut Vec<(Reply, bool)>,
    buffered: &mut usize,
    metrics: &mut Option<LoopMetrics>,
) -> usize {
    let idx = (to & 0xffff_ffff) as usize;
    let mut frames = 0;
    while !c.paused && !c.close_after_flush {
        let avail = &c.rbuf[c.rstart..c.rend];
        // A short buffer only needs the cheap check (it still rejects a foreign
        // peer by its first bytes); otherwise parse once, header and body.
        let result = if avail.len() < HEADER_LEN {
            check_frame(avail).map(|_| None)
        } else {
            parse_frame(avail).map(|f| f.map(|f| (f, HEADER_LEN + f.body.len())))
        };
        match result {
            Ok(Some((frame, n))) => {
                c.inflight += 1;
                if let Some(m) = metrics.as_mut() {
                    m.request(frame.header.opcode);
                    c.started.push_back((
                        frame.header.request_id,
                        frame.header.opcode,
                        Instant::now(),
                    ));
                }
                // Plain TCP (`Anyone`) is never asked; a TLS frame only
                // arrives after the handshake named the role.
                let role = c.role.unwrap_or(Role::Unmapped);
                let refused = match role {
                    Role::Anyone => Ok(()),
                    role => service.authorize(role, &frame.header, frame.body),
                };
                let authorized = refused.is_ok();
                let flow = match refused {
                    Ok(()) => service.on_frame(to, &frame.header, frame.body),
                    Err(msg) => {
                        let req = &frame.header;
                        let h = reply_header(req, FLAG_ERROR, 0, req.cluster_id);
                        let frame = error_frame(&h, ErrorCode::NotAuthorized, &msg);
                        c.owed += frame.len();
                        outbox.push((
                            Reply {
                                to,
                                frame,
                                close: false,
                            },
                            true,
                        ));
                        Flow::Reply
                    }
                };
                if flow == Flow::NoReply {
                    // One-way: no reply will take it off.
                    c.started.pop_back();
                }
                if flow != Flow::Close && authorized {
                    c.proven = true;
                    c.peer |= frame.header.opcode == Opcode::Peer as u8;
                }
                if flow == Flow::Close {
                    if let Some(m) = metrics.as_ref() {
                        m.error(ErrorKind::Violation);
                    }
                }
                if flow == Flow::NoReply {
                    c.inflight -= 1;
                }
                // Take the replies now, so their bytes count against this
                // connection's limit before the next frame is read.
                let mut answered = false;
                while let Some(r) = service.poll_reply() {
                    let mine = r.to == to;
                    if mine {
                        c.owed += r.frame.len();
                        answered = true;
                    }
                    outbox.push((r, mine));
                }
                if flow == Flow::Close && !answered {
                    // A service that closes without an error reply (a peer
                    // message that does not decode): nothing will answer this
                    // frame, so it must not hold the connection open.
                    c.inflight -= 1;
                }
                c.rstart += n;
                frames += 1;
                if flow == Flow::Close {
                    c.read_done = true;
                    c.close_after_flush = true;
                }
                if c.rstart == c.rend {
                    c.rstart = 0;
                    c.rend = 0;
                    if c.rbuf.len() > 4 * READ_CHUNK {
                        // Give the memory of a large frame back.
                        *buffered -= over_chunk(&c.rbuf);
                        c.rbuf = vec![0; READ_CHUNK];
                    }
                }
                if !under_limits(c, cfg) {
                    c.paused = true;
                }
            }
            Ok(None) => return frames,
            Err(e) => {
                if let Some(m) = metrics.as_ref() {
                    m.error(ErrorKind::Frame);
                }
                c.last_words = Some(protocol_error(avail, &e));
                c.read_done = true;
                c.close_after_flush = true;
                dirty.push(idx);
                return frames;
            }
        }
    }
    frames
}

/// The error reply for a frame that failed to parse: it names the request when
/// the header could be trusted.
fn protocol_error(buf: &[u8], e: &FrameError) -> Vec<u8> {
    let mut req = Header {
        opcode: Opcode::Error as u8,
        ..Header::default()
    };
    if let (FrameError::BadBodyChecksum { .. }, Some(head)) = (e, buf.first_chunk::<HEADER_LEN>()) {
        if let Ok(trusted) = Header::decode(head) {
            req = trusted;
        }
    }
    let h = reply_header(&req, FLAG_ERROR, 0, 0);
    error_frame(
        &h,
        ErrorCode::from(e),
        &format!("{e}; closing the connection"),
    )
}

/// Registers nothing; a helper so services can tell whether a token is theirs.
pub fn service_token(n: usize) -> Token {
    assert!(
        n < FIRST_CONN - SERVICE_TOKEN_BASE,
        "at most 13 service tokens"
    );
    Token(SERVICE_TOKEN_BASE + n)
}
