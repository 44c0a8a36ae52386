//! Client histories and the linearizability check against the agreed decided log.
//!
//! The decided log is the witness: if it holds only invoked commands, each once, every
//! acknowledged command sits exactly where its client was told, every response equals what the
//! model answers at that position, and no command is placed before one that had already
//! completed when it was invoked, then the log order is a linearization of the history.
//! Commands whose outcome is unknown (dropped by a leader) or still pending take effect at their
//! log position if decided, and never happened otherwise.
//!
//! # Invariants
//! - An op's outcome moves only from `Pending` to `Ok` or `Unknown`, once.
//! - An `Ok` op completed no earlier than it was invoked.
//! - `check` is O(n log n) in the history and the log, and reports the first problem found,
//!   naming the client, the sequence number and the position.

use std::collections::{BTreeMap, HashMap};

use crate::kv;

/// What a client knows about one of its commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpOutcome {
    /// No answer yet.
    Pending,
    /// Decided at `position`, answered `response`, learnt at tick `at`.
    Ok {
        /// The position where the command completed.
        position: u64,
        /// The response the client got.
        response: Vec<u8>,
        /// The tick at which the client got it.
        at: u64,
    },
    /// The leader dropped it: it may or may not be decided.
    Unknown,
}

/// One client command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// The issuing client.
    pub client: u32,
    /// The client's sequence number.
    pub seq: u32,
    /// The encoded command ([`kv::encode_put`], [`kv::encode_get`]).
    pub command: Vec<u8>,
    /// The tick at which it was submitted.
    pub invoked_at: u64,
    /// What the client learnt.
    pub outcome: OpOutcome,
}

/// Every command every client submitted, in submission order.
#[derive(Clone, Debug, Default)]
pub struct History {
    ops: Vec<Op>,
}

/// Counts of a history that passed [`check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckSummary {
    /// Ops acknowledged to their client.
    pub ok_ops: usize,
    /// Ops a leader dropped.
    pub unknown_ops: usize,
    /// Ops without an answer.
    pub pending_ops: usize,
    /// Commands in the decided log.
    pub decided_commands: usize,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Records a submission; returns the op's index for completing it later.
    pub fn invoke(&mut self, client: u32, seq: u32, command: Vec<u8>, invoked_at: u64) -> usize {
        let outcome = OpOutcome::Pending;
        self.ops.push(Op {
            client,
            seq,
            command,
            invoked_at,
            outcome,
        });
        self.ops.len() - 1
    }

    fn pending(&mut self, index: usize) -> &mut Op {
        let op = &mut self.ops[index];
        assert_eq!(
            op.outcome,
            OpOutcome::Pending,
            "client {} seq {} completed twice",
            op.client,
            op.seq
        );
        op
    }

    /// The client learnt that op `index` was decided at `position` with `response`, at tick `at`.
    pub fn complete_ok(&mut self, index: usize, position: u64, response: Vec<u8>, at: u64) {
        let op = self.pending(index);
        assert!(
            at >= op.invoked_at,
            "client {} seq {} completed before it was invoked",
            op.client,
            op.seq
        );
        op.outcome = OpOutcome::Ok {
            position,
            response,
            at,
        };
    }

    /// The leader dropped op `index`.
    pub fn complete_unknown(&mut self, index: usize) {
        self.pending(index).outcome = OpOutcome::Unknown;
    }

    /// Every op, in submission order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }
}

fn name(op: &Op) -> String {
    format!("client {} seq {}", op.client, op.seq)
}

/// Maps each command's bytes to the op that submitted it; equal bytes twice would make the
/// log ambiguous, so they are refused.
fn index_commands(history: &History) -> Result<HashMap<&[u8], usize>, String> {
    let mut by_bytes = HashMap::with_capacity(history.ops.len());
    for (index, op) in history.ops.iter().enumerate() {
        if let Some(first) = by_bytes.insert(op.command.as_slice(), index) {
            let first = &history.ops[first];
            return Err(format!(
                "{} submitted the same bytes as {}",
                name(op),
                name(first)
            ));
        }
    }
    Ok(by_bytes)
}

/// (a) validity and (b) no duplicates: the position of each op in the decided log.
fn place_commands(
    history: &History,
    decided: &[(u64, Vec<u8>)],
) -> Result<Vec<Option<u64>>, String> {
    let by_bytes = index_commands(history)?;
    let mut placed = vec![None; history.ops.len()];
    let mut previous: Option<u64> = None;
    for (position, command) in decided {
        if previous.is_some_and(|p| p >= *position) {
            return Err(format!(
                "decided log is not in increasing position order at {position}"
            ));
        }
        previous = Some(*position);
        let Some(decoded) = kv::decode(command) else {
            return Err(format!(
                "position {position}: decided command does not decode"
            ));
        };
        let Some(&index) = by_bytes.get(command.as_slice()) else {
            return Err(format!(
                "position {position}: decided command of client {} seq {} was never submitted",
                decoded.client(),
                decoded.seq()
            ));
        };
        if let Some(first) = placed[index] {
            let op = &history.ops[index];
            return Err(format!(
                "{} decided twice: positions {first} and {position}",
                name(op)
            ));
        }
        placed[index] = Some(*position);
    }
    Ok(placed)
}

/// (c) no loss: every acknowledged op is where its client was told.
fn check_placement(history: &History, placed: &[Option<u64>]) -> Result<(), String> {
    for (op, place) in history.ops.iter().zip(placed) {
        let OpOutcome::Ok { position, at, .. } = op.outcome else {
            continue;
        };
        match *place {
            None => {
                return Err(format!(
                    "{} lost: acknowledged at position {position} (tick {at}) but never decided",
                    name(op)
                ))
            }
            Some(actual) if actual != position => {
                return Err(format!(
                    "{} acknowledged at position {position} but decided at position {actual}",
                    name(op)
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// (d) responses: replaying the log through the model answers what each client got.
fn check_responses(
    history: &History,
    decided: &[(u64, Vec<u8>)],
    by_position: &BTreeMap<u64, usize>,
) -> Result<(), String> {
    let mut map = BTreeMap::new();
    for (position, command) in decided {
        let expected = kv::model_apply(&mut map, command);
        let op = &history.ops[by_position[position]];
        if let OpOutcome::Ok { response, .. } = &op.outcome {
            if *response != expected {
                return Err(format!(
                    "{} at position {position}: response {response:02x?}, model says {expected:02x?}",
                    name(op)
                ));
            }
        }
    }
    Ok(())
}

/// (e) real-time order: an op invoked after another completed is decided after it. Sweeps the
/// decided ops by invocation time over the acknowledged ops by completion time, keeping the
/// highest position completed so far.
fn check_real_time(history: &History, placed: &[Option<u64>]) -> Result<(), String> {
    let mut completed: Vec<(u64, u64, usize)> = Vec::new(); // (at, position, op)
    let mut invoked: Vec<(u64, u64, usize)> = Vec::new(); // (invoked_at, position, op)
    for (index, (op, place)) in history.ops.iter().zip(placed).enumerate() {
        let Some(position) = *place else { continue };
        invoked.push((op.invoked_at, position, index));
        if let OpOutcome::Ok { at, .. } = op.outcome {
            completed.push((at, position, index));
        }
    }
    completed.sort_unstable();
    invoked.sort_unstable();
    let mut next = 0;
    let mut highest: Option<(u64, usize)> = None; // (position, op) of completed ops so far
    for &(invoked_at, position, index) in &invoked {
        // Take in every op that completed strictly before this one was invoked.
        while next < completed.len() && completed[next].0 < invoked_at {
            let (_, done_position, done) = completed[next];
            if highest.is_none_or(|(p, _)| done_position > p) {
                highest = Some((done_position, done));
            }
            next += 1;
        }
        if let Some((done_position, done)) = highest {
            if done_position >= position {
                let (a, b) = (&history.ops[done], &history.ops[index]);
                let at = match a.outcome {
                    OpOutcome::Ok { at, .. } => at,
                    _ => unreachable!("only acknowledged ops complete"),
                };
                return Err(format!(
                    "real-time order: {} completed at tick {at} (position {done_position}), {} \
                     invoked later at tick {invoked_at} but decided earlier at position {position}",
                    name(a),
                    name(b)
                ));
            }
        }
    }
    Ok(())
}

/// Checks that `decided` (the agreed decided log, increasing positions) witnesses a
/// linearization of `history`.
pub fn check(history: &History, decided: &[(u64, Vec<u8>)]) -> Result<CheckSummary, String> {
    let placed = place_commands(history, decided)?;
    check_placement(history, &placed)?;
    let by_position: BTreeMap<u64, usize> = placed
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.map(|p| (p, i)))
        .collect();
    check_responses(history, decided, &by_position)?;
    check_real_time(history, &placed)?;
    let count = |f: fn(&OpOutcome) -> bool| history.ops.iter().filter(|op| f(&op.outcome)).count();
    Ok(CheckSummary {
        ok_ops: count(|o| matches!(o, OpOutcome::Ok { .. })),
        unknown_ops: count(|o| matches!(o, OpOutcome::Unknown)),
        pending_ops: count(|o| matches!(o, OpOutcome::Pending)),
        decided_commands: decided.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{encode_get, encode_put};

    fn value(v: u64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    /// Client 1 puts 5 at key 1, client 2 puts 6 (multi-slot sized), client 1 reads 6; client 3's
    /// put was dropped but decided, client 4's put was dropped and never decided.
    fn good() -> (History, Vec<(u64, Vec<u8>)>) {
        let mut h = History::new();
        let a = h.invoke(1, 1, encode_put(1, 1, 1, 5, 0), 10);
        let b = h.invoke(2, 1, encode_put(2, 1, 1, 6, 300), 12);
        let c = h.invoke(3, 1, encode_put(3, 1, 2, 7, 0), 13);
        let d = h.invoke(4, 1, encode_put(4, 1, 2, 8, 0), 13);
        h.complete_ok(a, 0, vec![], 20);
        h.complete_ok(b, 3, value(5), 25);
        h.complete_unknown(c);
        h.complete_unknown(d);
        let e = h.invoke(1, 2, encode_get(1, 2, 1, 0), 30);
        h.complete_ok(e, 5, value(6), 40);
        h.invoke(2, 2, encode_get(2, 2, 2, 0), 41);
        let decided = vec![
            (0, h.ops[a].command.clone()),
            (3, h.ops[b].command.clone()),
            (4, h.ops[c].command.clone()),
            (5, h.ops[e].command.clone()),
        ];
        (h, decided)
    }

    #[test]
    fn correct_history_passes() {
        let (h, decided) = good();
        let summary = check(&h, &decided).unwrap();
        assert_eq!(
            summary,
            CheckSummary {
                ok_ops: 3,
                unknown_ops: 2,
                pending_ops: 1,
                decided_commands: 4
            }
        );
        assert!(check(&History::new(), &[]).is_ok());
    }

    #[test]
    fn lost_ok_op_fails() {
        let (h, mut decided) = good();
        decided.remove(1);
        let err = check(&h, &decided).unwrap_err();
        assert!(err.contains("client 2 seq 1 lost"), "{err}");
    }

    #[test]
    fn misplaced_ok_op_fails() {
        let (h, mut decided) = good();
        decided[1].0 = 2;
        let err = check(&h, &decided).unwrap_err();
        assert!(
            err.contains("acknowledged at position 3 but decided at position 2"),
            "{err}"
        );
    }

    #[test]
    fn wrong_response_fails() {
        let (mut h, decided) = good();
        h.ops[4].outcome = OpOutcome::Ok {
            position: 5,
            response: value(5),
            at: 40,
        };
        let err = check(&h, &decided).unwrap_err();
        assert!(
            err.contains("client 1 seq 2 at position 5: response"),
            "{err}"
        );
    }

    #[test]
    fn real_time_inversion_fails() {
        // Client 2 is invoked after client 1 completed, yet decided before it.
        let mut h = History::new();
        let a = h.invoke(1, 1, encode_put(1, 1, 1, 5, 0), 10);
        h.complete_ok(a, 4, vec![], 20);
        let b = h.invoke(2, 1, encode_get(2, 1, 9, 0), 21);
        let decided = vec![(2, h.ops[b].command.clone()), (4, h.ops[a].command.clone())];
        let err = check(&h, &decided).unwrap_err();
        assert!(err.contains("real-time order: client 1 seq 1"), "{err}");
        assert!(err.contains("client 2 seq 1 invoked later"), "{err}");
        // Concurrent ops may be ordered either way.
        let mut h = History::new();
        let a = h.invoke(1, 1, encode_put(1, 1, 1, 5, 0), 10);
        h.complete_ok(a, 4, vec![], 20);
        h.invoke(2, 1, encode_get(2, 1, 9, 0), 20);
        assert!(check(&h, &decided).is_ok());
    }

    #[test]
    fn duplicate_fails() {
        let (h, mut decided) = good();
        decided.push((9, h.ops[2].command.clone()));
        let err = check(&h, &decided).unwrap_err();
        assert!(
            err.contains("client 3 seq 1 decided twice: positions 4 and 9"),
            "{err}"
        );
    }

    #[test]
    fn unknown_or_corrupt_command_fails() {
        let (h, mut decided) = good();
        decided.push((9, encode_put(7, 7, 1, 1, 0)));
        let err = check(&h, &decided).unwrap_err();
        assert!(
            err.contains("position 9: decided command of client 7 seq 7 was never"),
            "{err}"
        );
        decided.pop();
        decided.push((9, b"junk".to_vec()));
        let err = check(&h, &decided).unwrap_err();
        assert!(
            err.contains("position 9: decided command does not decode"),
            "{err}"
        );
    }

    #[test]
    fn unordered_log_fails() {
        let (h, mut decided) = good();
        decided.swap(0, 1);
        assert!(check(&h, &decided)
            .unwrap_err()
            .contains("increasing position order"));
    }
}
