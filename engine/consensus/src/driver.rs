//! The one place the Paxos core's durability rule is kept: a step's messages
//! and client answers ([`OnDurable`]) take effect only once that step's journal
//! records, and every earlier step's, are durable.
//!
//! The real node (a journal file, group-committed syncs) and the simulator (a
//! simulated disk whose unsynced writes a crash loses) both hand each
//! [`Ready`] to a [`Driver`] and tell it when a sync completes; they differ
//! only in their [`ReadyIo`].

use crate::paxos::{Applied, JournalRecord, OnDurable, Ready};
use std::collections::VecDeque;
use trex_wire::consensus::{Msg, NodeId};

/// The I/O a [`Driver`] performs on behalf of one replica.
pub trait ReadyIo {
    /// Why a journal write failed (the node stops on it: it can no longer keep
    /// its promises).
    type Error;

    /// Writes one step's journal records (possibly none) without waiting for
    /// them to be durable. Returns the journal position a sync must reach for
    /// these records and every earlier one to be durable. Positions never
    /// decrease from one call to the next.
    fn write(&mut self, records: Vec<JournalRecord>) -> Result<u64, Self::Error>;

    /// Sends `msg` to `to`; messages to this node itself come here too.
    fn send(&mut self, to: NodeId, msg: Msg);

    /// A command was applied: its client may be answered.
    fn answer(&mut self, applied: Applied);
}

/// Holds each step's [`OnDurable`] until the journal is durable up to that
/// step's position, then releases the steps in the order they were taken.
#[derive(Debug, Default)]
pub struct Driver {
    /// Steps written but not yet durable: (position to wait for, effects).
    held: VecDeque<(u64, OnDurable)>,
    /// The journal is durable up to here.
    durable: u64,
}

impl Driver {
    /// A driver over a journal that is durable up to position `durable` (what
    /// was read back at recovery is on disk).
    pub fn new(durable: u64) -> Driver {
        Driver {
            held: VecDeque::new(),
            durable,
        }
    }

    /// The journal position known durable.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Steps written but still waiting for a sync.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes one step's output: writes its records now and holds its messages
    /// and answers until they are durable. What is already durable (a step
    /// without records after every earlier write was synced) is released at
    /// once, through `io`.
    pub fn step<I: ReadyIo>(&mut self, ready: Ready, io: &mut I) -> Result<(), I::Error> {
        let position = io.write(ready.persist)?;
        if let Some((last, _)) = self.held.back() {
            assert!(
                *last <= position,
                "journal positions went back from {last} to {position}"
            );
        }
        self.held.push_back((position, ready.on_durable));
        self.release(io);
        Ok(())
    }

    /// A sync completed: the journal is durable up to `position`. Releases
    /// every step that was waiting for no more than that, in order.
    pub fn synced<I: ReadyIo>(&mut self, position: u64, io: &mut I) {
        self.durable = self.durable.max(position);
        self.release(io);
    }

    fn release<I: ReadyIo>(&mut self, io: &mut I) {
        while self.held.front().is_some_and(|(p, _)| *p <= self.durable) {
            let (position, out) = self.held.pop_front().expect("checked above");
            debug_assert!(position <= self.durable, "released before durable");
            for (to, msg) in out.send {
                io.send(to, msg);
            }
            for applied in out.applied {
                io.answer(applied);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trex_wire::consensus::Ballot;

    /// Records what the driver did, in order; every write is one position.
    #[derive(Default)]
    struct Log {
        position: u64,
        done: Vec<String>,
    }

    impl ReadyIo for Log {
        type Error = ();
        fn write(&mut self, records: Vec<JournalRecord>) -> Result<u64, ()> {
            self.position += records.len() as u64;
            self.done.push(format!("write {}", records.len()));
            Ok(self.position)
        }
        fn send(&mut self, to: NodeId, _msg: Msg) {
            self.done.push(format!("send {to}"));
        }
        fn answer(&mut self, a: Applied) {
            self.done.push(format!("answer {}", a.client));
        }
    }

    fn step(records: usize, to: NodeId, client: u64) -> Ready {
        let ballot = Ballot {
            counter: 1,
            node: 1,
        };
        Ready {
            persist: vec![JournalRecord::Promise(ballot); records],
            on_durable: OnDurable {
                send: vec![(to, Msg::Commit { ballot, commit: 0 })],
                applied: vec![Applied {
                    slot: 0,
                    client,
                    seq: 1,
                    result: Vec::new(),
                }],
            },
            ..Ready::default()
        }
    }

    #[test]
    fn messages_wait_for_their_records_and_leave_in_step_order() {
        let (mut d, mut io) = (Driver::new(0), Log::default());
        d.step(step(1, 2, 10), &mut io).unwrap();
        d.step(step(2, 3, 11), &mut io).unwrap();
        assert_eq!(
            io.done,
            ["write 1", "write 2"],
            "nothing sent before a sync"
        );
        assert_eq!(d.held(), 2);
        d.synced(2, &mut io);
        assert_eq!(io.done[2..], ["send 2", "answer 10"], "only the first step");
        d.synced(3, &mut io);
        assert_eq!(io.done[4..], ["send 3", "answer 11"]);
        assert_eq!(d.held(), 0);
    }

    #[test]
    fn a_step_without_records_waits_only_for_earlier_writes() {
        let (mut d, mut io) = (Driver::new(0), Log::default());
        d.step(step(0, 2, 10), &mut io).unwrap();
        assert_eq!(io.done, ["write 0", "send 2", "answer 10"]);
        d.step(step(1, 2, 11), &mut io).unwrap();
        d.step(step(0, 3, 12), &mut io).unwrap();
        assert_eq!(io.done.len(), 5, "queued behind the unsynced write");
        d.synced(1, &mut io);
        assert_eq!(io.done[5..], ["send 2", "answer 11", "send 3", "answer 12"]);
    }
}
