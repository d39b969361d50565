//! A JetStream publish benchmark speaking the NATS text protocol directly, so
//! that the comparison needs nothing beyond std: `clients` connections, each
//! publishing windows of `depth` messages of `size` bytes to a file-backed
//! stream and waiting for the `depth` acks (like `trex-bench append --depth`).
//!
//! Open loop (a RATE above 0, messages per second over all clients): the
//! windows follow one schedule shared by all clients (window `k` due at
//! start + k * DEPTH / RATE, as `trex-bench --rate` schedules its requests);
//! a client still busy when a window falls due sends it late, and its latency
//! counts from when it was due (coordinated omission corrected). The first
//! WARMUP seconds are left out of every figure. Windows due in the measured
//! time but never sent are reported as `missed`. TIMELINE_CSV gets, per
//! second of the schedule, the windows due then and their p50/p99/max.
//! The stream keeps at most 4 GiB (older messages are discarded), so long
//! runs stay bounded on disk.
//!
//! usage: nats-bench HOST:PORT SIZE CLIENTS DEPTH SECONDS REPLICAS [JSON_OUT [RATE [WARMUP [TIMELINE_CSV]]]]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connects and subscribes to this connection's own reply inbox `inbox.>` (a
/// shared wildcard would deliver every client's acks to every client).
fn connect(addr: &str, inbox: &str) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).expect("connect to nats-server");
    s.set_nodelay(true).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap(); // INFO
    let mut w = s;
    let hello = format!("CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":false}}\r\nSUB {inbox}.> 1\r\nPING\r\n");
    w.write_all(hello.as_bytes()).unwrap();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.starts_with("PONG") {
            break;
        }
        if line.starts_with("-ERR") {
            panic!("nats: {line}");
        }
    }
    (w, r)
}

/// Reads one MSG (answering PINGs on the way); returns its payload.
fn read_msg(w: &mut TcpStream, r: &mut BufReader<TcpStream>, line: &mut String, buf: &mut Vec<u8>) -> Vec<u8> {
    loop {
        line.clear();
        if r.read_line(line).unwrap() == 0 {
            panic!("nats closed the connection");
        }
        if line.starts_with("PING") {
            w.write_all(b"PONG\r\n").unwrap();
            continue;
        }
        if line.starts_with("-ERR") {
            panic!("nats: {line}");
        }
        if let Some(rest) = line.strip_prefix("MSG ") {
            let len: usize = rest.split_whitespace().last().unwrap().parse().unwrap();
            buf.resize(len + 2, 0);
            r.read_exact(buf).unwrap();
            return buf[..len].to_vec();
        }
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 7 {
        eprintln!("usage: nats-bench HOST:PORT SIZE CLIENTS DEPTH SECONDS REPLICAS [JSON_OUT [RATE [WARMUP [TIMELINE_CSV]]]]");
        std::process::exit(2);
    }
    let (addr, size, clients, depth, secs, replicas) = (
        a[1].clone(),
        a[2].parse::<usize>().unwrap(),
        a[3].parse::<usize>().unwrap(),
        a[4].parse::<usize>().unwrap(),
        a[5].parse::<u64>().unwrap(),
        a[6].parse::<u32>().unwrap(),
    );
    // (Re)create the stream: file storage, `replicas` replicas.
    let (mut w, mut r) = connect(&addr, "_INBOX.admin");
    let (mut line, mut buf) = (String::new(), Vec::new());
    let del = b"PUB $JS.API.STREAM.DELETE.BENCH _INBOX.admin.del 0\r\n\r\n";
    w.write_all(del).unwrap();
    read_msg(&mut w, &mut r, &mut line, &mut buf);
    let rate = a.get(8).map_or(0.0, |r| r.parse::<f64>().unwrap());
    let warmup = Duration::from_secs_f64(a.get(9).map_or(0.0, |w| w.parse::<f64>().unwrap()));
    let cfg = format!("{{\"name\":\"BENCH\",\"subjects\":[\"bench\"],\"storage\":\"file\",\"num_replicas\":{replicas},\"max_bytes\":4294967296,\"discard\":\"old\"}}");
    // A fresh cluster may not know all its peers yet ("no suitable peers for
    // placement"): ask again for up to 10 s.
    let mut tries = 0;
    loop {
        w.write_all(format!("PUB $JS.API.STREAM.CREATE.BENCH _INBOX.admin.create {}\r\n{cfg}\r\n", cfg.len()).as_bytes()).unwrap();
        let created = String::from_utf8_lossy(&read_msg(&mut w, &mut r, &mut line, &mut buf)).into_owned();
        if !created.contains("\"error\"") {
            break;
        }
        tries += 1;
        if tries >= 20 {
            panic!("cannot create the stream: {created}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let origin = Instant::now() + Duration::from_millis(200);
    let measure_from = origin + warmup;
    let end = measure_from + Duration::from_secs(secs);
    // Open loop: the time between windows, over all clients.
    let interval = (rate > 0.0).then(|| Duration::from_secs_f64(depth as f64 / rate));
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (addr, stop, done, next) = (addr.clone(), stop.clone(), done.clone(), next.clone());
            std::thread::spawn(move || {
                let (mut w, mut r) = connect(&addr, &format!("_INBOX.c{c}"));
                let payload = vec![b'x'; size];
                let mut window = Vec::new();
                for k in 0..depth {
                    window.extend_from_slice(format!("PUB bench _INBOX.c{c}.{k} {size}\r\n").as_bytes());
                    window.extend_from_slice(&payload);
                    window.extend_from_slice(b"\r\n");
                }
                let (mut line, mut buf) = (String::new(), Vec::new());
                // (when due, latency in us) of every measured window.
                let mut lat: Vec<(Duration, u64)> = Vec::new();
                let mut sent_measured = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let due = match interval {
                        Some(iv) => {
                            let k = next.fetch_add(1, Ordering::Relaxed);
                            let due = origin + iv.mul_f64(k as f64);
                            let now = Instant::now();
                            if due >= end || now >= end {
                                break;
                            }
                            if due > now {
                                std::thread::sleep(due - now);
                            }
                            due
                        }
                        None => {
                            let now = Instant::now();
                            if now >= end {
                                break;
                            }
                            now.max(origin)
                        }
                    };
                    w.write_all(&window).unwrap();
                    for _ in 0..depth {
                        let ack = read_msg(&mut w, &mut r, &mut line, &mut buf);
                        if ack.windows(7).any(|x| x == b"\"error\"") {
                            panic!("publish refused: {}", String::from_utf8_lossy(&ack));
                        }
                    }
                    if due >= measure_from {
                        lat.push((due - measure_from, due.elapsed().as_micros() as u64));
                        sent_measured += 1;
                        done.fetch_add(depth as u64, Ordering::Relaxed);
                    }
                }
                (lat, sent_measured)
            })
        })
        .collect();
    // Every client stops by itself at `end`; this bounds a hung server.
    let deadline = end + Duration::from_secs(30);
    while Instant::now() < deadline && !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    let mut timed: Vec<(Duration, u64)> = Vec::new();
    let mut sent = 0;
    for h in handles {
        if !h.is_finished() {
            eprintln!("nats-bench: a client is still waiting for acks 30 s after the end; not counted");
            continue;
        }
        let (l, n) = h.join().unwrap();
        timed.extend(l);
        sent += n;
    }
    let mut lat: Vec<u64> = timed.iter().map(|(_, l)| *l).collect();
    lat.sort_unstable();
    let n = done.load(Ordering::Relaxed);
    let p = |lat: &[u64], q: f64| lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    let rate_got = n as f64 / secs as f64;
    let missed = interval.map_or(0, |iv| {
        let due = (Duration::from_secs(secs).as_secs_f64() / iv.as_secs_f64()) as u64;
        due.saturating_sub(sent)
    });
    println!(
        "nats-jetstream: {n} acked publishes in {secs}s = {rate_got:.0} msgs/s, {:.1} MB/s; per window of {depth}: p50 {} us, p99 {} us, max {} us; {missed} windows missed",
        rate_got * size as f64 / 1e6,
        p(&lat, 0.5),
        p(&lat, 0.99),
        lat.last().copied().unwrap_or(0)
    );
    if let Some(out) = a.get(7) {
        let json = format!(
            "{{\"workload\":\"nats-jetstream\",\"mode\":\"{}\",\"rate\":{rate},\"ops\":{n},\"seconds\":{secs},\"ops_per_s\":{rate_got:.1},\"mb_per_s\":{:.2},\"requests\":{},\"missed\":{missed},\"latency_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}}}\n",
            if interval.is_some() { "open" } else { "closed" },
            rate_got * size as f64 / 1e6,
            lat.len(),
            p(&lat, 0.5), p(&lat, 0.9), p(&lat, 0.99), p(&lat, 0.999), lat.last().copied().unwrap_or(0)
        );
        std::fs::write(out, json).unwrap();
    }
    if let Some(out) = a.get(10) {
        let mut by_sec: Vec<Vec<u64>> = vec![Vec::new(); secs as usize + 1];
        for (at, l) in timed {
            by_sec[(at.as_secs() as usize).min(secs as usize)].push(l);
        }
        let mut csv = String::from("second,windows,p50_us,p99_us,max_us\n");
        for (i, mut v) in by_sec.into_iter().enumerate() {
            v.sort_unstable();
            csv.push_str(&format!("{i},{},{},{},{}\n", v.len(), p(&v, 0.5), p(&v, 0.99), v.last().copied().unwrap_or(0)));
        }
        std::fs::write(out, csv).unwrap();
    }
}
