//! The state-machine operations of `docs/wire.md` ("op-…" vectors), built by the
//! code and compared byte for byte with the document.

use trex_consensus::sm::{LayoutSegment, Op, Projection, Role};

fn vectors() -> Vec<(&'static str, Vec<u8>)> {
    let install = Op::Install {
        expected_epoch: 1,
        projection: Projection {
            epoch: 2,
            sequencer: 0,
            segments: vec![LayoutSegment {
                start: 0,
                end: u64::MAX,
                stripes: vec![vec![1, 2], vec![3, 4]],
            }],
        },
    };
    vec![
        (
            "op-register",
            Op::Register {
                id: 7420,
                role: Role::Storage,
                addr: "127.0.0.1:7420".into(),
            }
            .encode(),
        ),
        (
            "op-init-layout",
            Op::InitLayout {
                stripes: 2,
                replicas: 2,
            }
            .encode(),
        ),
        ("op-install", install.encode()),
        ("op-members", Op::Members.encode()),
        (
            "op-install-as-sequencer",
            Op::InstallAsSequencer {
                expected_epoch: 1,
                projection: Projection {
                    epoch: 2,
                    sequencer: 7410,
                    segments: vec![LayoutSegment {
                        start: 0,
                        end: u64::MAX,
                        stripes: vec![vec![1, 2]],
                    }],
                },
                lease_token: 3,
            }
            .encode(),
        ),
        (
            "op-acquire",
            Op::Acquire {
                name: "jobs".into(),
                holder: "alice".into(),
                ttl_ms: 10_000,
            }
            .encode(),
        ),
        (
            "op-renew",
            Op::Renew {
                name: "jobs".into(),
                token: 7,
                ttl_ms: 10_000,
            }
            .encode(),
        ),
        (
            "op-release",
            Op::Release {
                name: "jobs".into(),
                token: 7,
            }
            .encode(),
        ),
    ]
}

fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| {
            c.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn documented_operations_match_the_code() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/wire.md"))
        .unwrap();
    if std::env::var("TREX_PRINT_VECTORS").is_ok() {
        for (name, bytes) in vectors() {
            println!("```hex {name}\n{}\n```\n", hex(&bytes));
        }
    }
    for (name, bytes) in vectors() {
        let start = doc
            .find(&format!("```hex {name}\n"))
            .unwrap_or_else(|| panic!("docs/wire.md lacks '{name}'"));
        let body = &doc[start..]
            .lines()
            .skip(1)
            .take_while(|l| l.trim() != "```")
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            body.trim(),
            hex(&bytes),
            "vector '{name}' differs from the code"
        );
        assert_eq!(
            Op::decode(&bytes).unwrap().encode(),
            bytes,
            "'{name}' round-trips"
        );
    }
}
