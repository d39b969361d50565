//! A JetStream publish benchmark speaking the NATS text protocol directly, so
//! that the comparison needs nothing beyond std: `clients` connections, each
//! publishing windows of `depth` messages of `size` bytes to a file-backed
//! stream and waiting for the `depth` acks (like `trex-bench append --depth`).
//!
//! usage: nats-bench HOST:PORT SIZE CLIENTS DEPTH SECONDS REPLICAS [JSON_OUT]

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
        eprintln!("usage: nats-bench HOST:PORT SIZE CLIENTS DEPTH SECONDS REPLICAS [JSON_OUT]");
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
    let cfg = format!("{{\"name\":\"BENCH\",\"subjects\":[\"bench\"],\"storage\":\"file\",\"num_replicas\":{replicas}}}");
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
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (addr, stop, done) = (addr.clone(), stop.clone(), done.clone());
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
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    w.write_all(&window).unwrap();
                    for _ in 0..depth {
                        let ack = read_msg(&mut w, &mut r, &mut line, &mut buf);
                        if ack.windows(7).any(|x| x == b"\"error\"") {
                            panic!("publish refused: {}", String::from_utf8_lossy(&ack));
                        }
                    }
                    lat.push(t0.elapsed().as_micros() as u64);
                    done.fetch_add(depth as u64, Ordering::Relaxed);
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::SeqCst);
    let mut lat: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    lat.sort_unstable();
    let secs = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let p = |q: f64| lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    let rate = n as f64 / secs;
    println!("nats-jetstream: {n} acked publishes in {secs:.2}s = {rate:.0} msgs/s, {:.1} MB/s; p99 window {} us", rate * size as f64 / 1e6, p(0.99));
    if let Some(out) = a.get(7) {
        let json = format!(
            "{{\"workload\":\"nats-jetstream\",\"ops\":{n},\"seconds\":{secs:.3},\"ops_per_s\":{rate:.1},\"mb_per_s\":{:.2},\"latency_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}}}\n",
            rate * size as f64 / 1e6, p(0.5), p(0.9), p(0.99), p(0.999), lat.last().copied().unwrap_or(0)
        );
        std::fs::write(out, json).unwrap();
    }
}
