//! Mutual TLS and roles, against a real `trex up` cluster with its default
//! certificates (docs/security.md): a client without a certificate, with a
//! certificate of another CA, and with a client-role certificate trying what
//! only an admin or a node may do is refused with the documented error, and
//! nothing changes in the cluster, while a client keeps appending.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use trex_consensus::client::{ConsensusClient, Submit};
use trex_consensus::sm::Op;
use trex_consensus::ConsensusError;
use trex_net::tls::{RoleMap, TlsConfig, TlsFiles};
use trex_wire::consensus::{encode_peer, Ballot, Msg};
use trex_wire::{begin_frame, finish_frame, ErrorCode, Header, Opcode};

mod common;

/// `trex ARGS` with the certificate `name` of `dir` (none: no TLS settings).
fn trex(dir: Option<&Path>, name: &str, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trex"));
    c.args(args)
        .env_remove("TREX_TLS_DIR")
        .env_remove("TREX_TLS_NAME")
        .env_remove("TREX_INSECURE")
        .env_remove("TREX_CLUSTER_ID");
    if let Some(d) = dir {
        c.env("TREX_TLS_DIR", d).env("TREX_TLS_NAME", name);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What a refusal must leave alone: the layout's epoch, the recorded trim
/// mark, and each unit's sealed epoch and trim mark.
fn state(tls: &Path, eps: &str, units: &[String]) -> String {
    let mut s = String::new();
    for args in [&["layout", "show"][..], &["layout", "replicas"][..]] {
        let o = trex(
            Some(tls),
            "admin",
            &[args, &["--endpoints", eps, "-w", "json"]].concat(),
        );
        assert!(o.status.success(), "{}", text(&o));
        s.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    for u in units {
        let o = trex(
            Some(tls),
            "admin",
            &["unit", "info", "--node", u, "-w", "json"],
        );
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        s.push_str(&format!(
            "{u} sealed {} trim {}\n",
            v["sealed_epoch"], v["trim_mark"]
        ));
    }
    s
}

/// The refused command exits 1 and its message names the error and the role.
fn assert_not_authorized(o: &Output, needs: &str) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("not-authorized"), "{t}");
    assert!(t.contains(&format!("needs an {needs} certificate")), "{t}");
    assert!(t.contains("docs/security.md"), "{t}");
}

#[test]
fn refused_requests_change_nothing_while_a_client_appends() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::trex_up(&dir.path().join("up"), &["--tls"]);
    let tls: PathBuf = dir.path().join("up").join("tls");
    let eps = cluster.eps.clone();
    let units: Vec<String> = (20..24)
        .map(|o| format!("127.0.0.1:{}", cluster.base + o))
        .collect();
    let o = trex(
        Some(&tls),
        "admin",
        &["append", "first", "--endpoints", &eps],
    );
    assert!(o.status.success(), "{}", text(&o));

    // A client-role certificate appends all along (bounded: 400 appends).
    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let (stop, tls, eps) = (stop.clone(), tls.clone(), eps.clone());
        std::thread::spawn(move || {
            let mut done = 0;
            while !stop.load(Ordering::SeqCst) && done < 400 {
                let o = trex(
                    Some(&tls),
                    "client",
                    &["append", "more", "--endpoints", &eps],
                );
                assert!(o.status.success(), "a client append failed: {}", text(&o));
                done += 1;
            }
            done
        })
    };
    let before = state(&tls, &eps, &units);

    // No certificate at all: a plain client gets a plain `not-authorized`.
    let o = trex(
        None,
        "",
        &["append", "x", "--endpoints", &eps, "--insecure"],
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("not-authorized") && t.contains("requires TLS"),
        "{t}"
    );
    let o = trex(
        None,
        "",
        &["unit", "seal", "99", "--node", &units[0], "--insecure"],
    );
    assert!(text(&o).contains("not-authorized"), "{}", text(&o));

    // Another CA: its server check fails, and so does a certificate it signed
    // presented to a server the client trusts.
    let other = dir.path().join("other");
    let o = trex(
        None,
        "",
        &["certs", "init", "--dir", other.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = trex(Some(&other), "admin", &["append", "x", "--endpoints", &eps]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("TLS failed"), "{}", text(&o));
    let ca = tls.join("ca.pem");
    let (cert, key) = (other.join("admin.pem"), other.join("admin.key"));
    let foreign = [
        "--tls-ca",
        ca.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let o = trex(
        None,
        "",
        &[&["append", "x", "--endpoints", &eps][..], &foreign].concat(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("TLS failed"), "{}", text(&o));
    let o = trex(
        None,
        "",
        &[&["unit", "seal", "99", "--node", &units[0]][..], &foreign].concat(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("TLS failed"), "{}", text(&o));

    // A client certificate: seal, trim (one replica, and the log), bootstrap
    // a layout, remove a member: refused, each needing an admin.
    for args in [
        &["unit", "seal", "99", "--node", &units[0]][..],
        &["unit", "trim", "1", "--node", &units[1]][..],
        &["trim", "1", "--endpoints", &eps][..],
        &["layout", "init", "--endpoints", &eps][..],
        &["layout", "replicas", "3", "--endpoints", &eps][..],
    ] {
        let o = trex(Some(&tls), "client", args);
        assert_not_authorized(&o, "admin");
    }

    // In this process: TLS with the right CA but no certificate at all.
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(tls.join("ca.pem")).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let no_cert = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    trex_net::tls::set_client_config(Some(Arc::new(no_cert)));
    let refused = match trex_net::conn::connect(&units[0], Duration::from_secs(3)) {
        Err(e) => e.to_string(),
        // TLS 1.3: the server's refusal arrives with the first read.
        Ok((mut s, _)) => {
            let mut f = Vec::new();
            let st = begin_frame(&mut f);
            finish_frame(
                &mut f,
                st,
                Header {
                    opcode: Opcode::Info as u8,
                    request_id: 1,
                    ..Header::default()
                },
            );
            let _ = s.write_all(&f);
            trex_net::conn::read_frame(&mut s)
                .expect_err("served without a certificate")
                .to_string()
        }
    };
    assert!(refused.contains("TLS failed"), "{refused}");

    // In this process: installing a layout, and a peer message, with the
    // client certificate; the peer's connection stays usable.
    let config = TlsConfig::load(&TlsFiles::in_dir(&tls, "client"), RoleMap::default()).unwrap();
    trex_net::tls::set_client_config(Some(config.client.clone()));
    let mut c = ConsensusClient::new(&eps, Duration::from_secs(3)).unwrap();
    let (epoch, projection) = c.layout().unwrap();
    let mut next = projection.expect("a layout");
    next.epoch = epoch + 1;
    next.segments[0].stripes.truncate(1);
    match c.submit_ok(&Op::Install {
        expected_epoch: epoch,
        projection: next,
    }) {
        Err(ConsensusError::NotAuthorized(t)) => {
            assert!(t.contains("install needs an admin"), "{t}")
        }
        other => panic!("install with a client certificate: {other:?}"),
    }
    let (mut s, _) =
        trex_net::conn::connect(eps.split(',').next().unwrap(), Duration::from_secs(3)).unwrap();
    let mut f = Vec::new();
    let st = begin_frame(&mut f);
    encode_peer(
        &mut f,
        2,
        &Msg::Prepare {
            ballot: Ballot {
                counter: 1 << 20,
                node: 2,
            },
            from: 0,
        },
    );
    finish_frame(
        &mut f,
        st,
        Header {
            opcode: Opcode::Peer as u8,
            request_id: 7,
            ..Header::default()
        },
    );
    s.write_all(&f).unwrap();
    let (h, body) = trex_net::conn::read_frame(&mut s).unwrap();
    assert!(h.is_error());
    let e = trex_wire::decode_error(&body).unwrap();
    assert_eq!(e.code, ErrorCode::NotAuthorized as u16, "{}", e.message);
    assert!(
        e.message.contains("peer message needs a node certificate"),
        "{}",
        e.message
    );
    let mut f = Vec::new();
    let st = begin_frame(&mut f);
    finish_frame(
        &mut f,
        st,
        Header {
            opcode: Opcode::NodeStatus as u8,
            request_id: 8,
            ..Header::default()
        },
    );
    s.write_all(&f).unwrap();
    let (h, _) = trex_net::conn::read_frame(&mut s).unwrap();
    assert!(
        !h.is_error() && h.request_id == 8,
        "the connection stays usable: {h:?}"
    );

    stop.store(true, Ordering::SeqCst);
    let appended = appender.join().unwrap();
    assert!(appended > 0);
    assert_eq!(
        state(&tls, &eps, &units),
        before,
        "a refused request changed the cluster"
    );

    // SIGHUP: a unit reads its certificate files again and keeps serving.
    common::kill(&format!("storage --listen {}", units[0]), libc::SIGHUP);
    let log = dir.path().join("up").join("logs").join("unit-1.log");
    let reloaded = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("reloaded the TLS certificates"))
    });
    assert!(reloaded, "unit-1 did not log a reload after SIGHUP");
    let o = trex(Some(&tls), "client", &["unit", "info", "--node", &units[0]]);
    assert!(o.status.success(), "{}", text(&o));

    // Everything appended is there, read with a client certificate.
    let o = trex(
        Some(&tls),
        "client",
        &[
            "read",
            "0",
            "--count",
            &(appended + 1).to_string(),
            "--endpoints",
            &eps,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        appended + 1,
        "{}",
        text(&o)
    );
}
