//! Real `trex node consensus` and `trex node sequencer` processes of one
//! cluster (`--cluster-id 7`): the consensus nodes elect a leader only if their
//! peer links carry the id, the sequencer registers only if its consensus
//! client does, and a frame of another cluster (a client frame or a peer frame)
//! is answered `wrong-cluster` and its connection closed, while the servers
//! keep serving their own cluster.

mod common;

use common::{free_port, T};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trex_consensus::client::{ConsensusClient, Submit};
use trex_consensus::sm::{Op, Role};
use trex_wire::consensus::{self as cw, Ballot, Msg};
use trex_wire::{self as wire, begin_frame, finish_frame, ErrorCode, Header, Opcode, HEADER_LEN};

const CLUSTER: u32 = 7;
const FOREIGN: u32 = 8;

struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_trex"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn trex")
}

fn frame(op: Opcode, request_id: u64, cluster_id: u32, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    let s = begin_frame(&mut f);
    f.extend_from_slice(body);
    let h = Header {
        opcode: op as u8,
        request_id,
        cluster_id,
        ..Header::default()
    };
    finish_frame(&mut f, s, h);
    f
}

/// Sends `bytes` on a new connection; returns the reply's header and body, and
/// whether the server closed the connection after it.
fn exchange(addr: &str, bytes: &[u8]) -> std::io::Result<(Header, Vec<u8>, bool)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(T))?;
    s.write_all(bytes)?;
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head)?;
    let h = Header::decode(&head).expect("a valid reply header");
    let mut body = vec![0u8; h.body_len as usize];
    s.read_exact(&mut body)?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let closed = match s.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => panic!("{addr} sent more than one reply"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(_) => true, // reset: closed too
    };
    Ok((h, body, closed))
}

/// `bytes` (a request of another cluster) is answered `wrong-cluster`, in a
/// reply that echoes the request and names the server's own cluster, and the
/// connection is closed.
fn assert_wrong_cluster(addr: &str, bytes: &[u8], request_id: u64, what: &str) {
    let (h, body, closed) = exchange(addr, bytes).unwrap();
    assert!(
        h.is_response() && h.is_error(),
        "{what}: an error reply {h:?}"
    );
    let e = wire::decode_error(&body).unwrap();
    assert_eq!(
        ErrorCode::from_u16(e.code),
        Some(ErrorCode::WrongCluster),
        "{what}: {}",
        e.message
    );
    assert!(e.message.contains("cluster 8") && e.message.contains("cluster 7"));
    assert_eq!(
        h.request_id, request_id,
        "{what}: the reply names the request"
    );
    assert_eq!(
        h.cluster_id, CLUSTER,
        "{what}: the reply carries the server's id"
    );
    assert!(closed, "{what}: the connection is closed after the refusal");
}

/// Retries `f` until it returns `Some`, for at most `within`.
fn eventually<R>(within: Duration, what: &str, mut f: impl FnMut() -> Option<R>) -> R {
    let t0 = Instant::now();
    loop {
        if let Some(r) = f() {
            return r;
        }
        assert!(t0.elapsed() < within, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sequencer_and_consensus_nodes_refuse_a_foreign_cluster_and_serve_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = CLUSTER.to_string();
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers = addrs.join(",");
    let mut kids = Kids(Vec::new());
    for (i, addr) in addrs.iter().enumerate() {
        let data = dir.path().join(format!("n{}", i + 1));
        let id = (i + 1).to_string();
        kids.0.push(spawn(&[
            "node",
            "consensus",
            "--id",
            &id,
            "--listen",
            addr,
            "--peers",
            &peers,
            "--data-dir",
            data.to_str().unwrap(),
            "--election-timeout",
            "200ms",
            "--heartbeat",
            "40ms",
            "--cluster-id",
            &cluster,
        ]));
    }
    // A leader is elected and commits: the peer links carry cluster 7.
    let mut c = ConsensusClient::new(&peers, T)
        .unwrap()
        .with_cluster_id(CLUSTER);
    let register = |id| Op::Register {
        id,
        role: Role::Storage,
        addr: format!("127.0.0.1:{}", 7420 + id),
    };
    eventually(Duration::from_secs(20), "a commit in cluster 7", || {
        c.submit_ok(&register(1)).ok()
    });

    // A client frame and a peer frame of cluster 8 are refused.
    let status = frame(Opcode::NodeStatus, 11, FOREIGN, &[]);
    assert_wrong_cluster(&addrs[0], &status, 11, "consensus client frame");
    let mut peer = Vec::new();
    let ballot = Ballot {
        counter: 1_000,
        node: 2,
    };
    cw::encode_peer(&mut peer, 2, &Msg::Commit { ballot, commit: 0 });
    let peer = frame(Opcode::Peer, 12, FOREIGN, &peer);
    assert_wrong_cluster(&addrs[0], &peer, 12, "consensus peer frame");
    // So is a client that sends the default cluster 0.
    let e = ConsensusClient::node_status(&addrs[0], T).unwrap_err();
    assert!(e.to_string().contains("wrong-cluster"), "{e}");

    // The node keeps serving its own cluster.
    let status = frame(Opcode::NodeStatus, 13, CLUSTER, &[]);
    let (h, body, closed) = exchange(&addrs[0], &status).unwrap();
    assert!(!h.is_error() && !closed, "{h:?}");
    assert_eq!((h.request_id, h.cluster_id), (13, CLUSTER));
    assert_eq!(cw::decode_node_status(&body).unwrap().id, 1);
    c.submit_ok(&register(2)).unwrap();

    // A sequencer of cluster 7 registers (its consensus client carries the id).
    let seq = format!("127.0.0.1:{}", free_port());
    kids.0.push(spawn(&[
        "node",
        "sequencer",
        "--listen",
        &seq,
        "--endpoints",
        &peers,
        "--id",
        "50",
        "--cluster-id",
        &cluster,
    ]));
    eventually(Duration::from_secs(20), "the sequencer registered", || {
        let m = c.members().ok()?;
        m.get(&50).filter(|m| m.role == Role::Sequencer).map(|_| ())
    });
    let mut body = Vec::new();
    wire::encode_token_request(&mut body, 1);
    let foreign = frame(Opcode::Token, 21, FOREIGN, &body);
    assert_wrong_cluster(&seq, &foreign, 21, "sequencer token request");
    // ...and keeps answering its own cluster (granted or not-sequencer: no
    // layout was installed, so it may not serve yet; either is a token reply).
    let own = frame(Opcode::Token, 22, CLUSTER, &body);
    let (h, body, closed) = exchange(&seq, &own).unwrap();
    assert!(!h.is_error() && !closed, "{h:?}");
    assert_eq!((h.request_id, h.cluster_id), (22, CLUSTER));
    wire::decode_token_reply(&body).unwrap();

    // The command line talks to cluster 7 when told to, and says what to do
    // (at once, exit 2) when not.
    let trex = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_trex"))
            .args(args)
            .args(["--endpoints", &peers, "--timeout", "1s"])
            .output()
            .expect("run trex");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = trex(&["members", "--cluster-id", &cluster]);
    assert_eq!(code, Some(0), "{err}");
    let t0 = Instant::now();
    let (code, err) = trex(&["members"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("wrong-cluster") && err.contains("--cluster-id"),
        "{err}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "refused at once, not after retries"
    );
    let (code, err) = trex(&["endpoint", "status", "--cluster-id", &cluster]);
    assert_eq!(code, Some(0), "{err}");
}
