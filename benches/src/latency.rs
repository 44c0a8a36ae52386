//! Leader-side replication latency and throughput on the shared-memory fabric, in-process.
//!
//! Two pinned threads: the leader's replication plane (the thread that submits and measures),
//! and one thread that polls everything else (every background plane, the followers'
//! replication planes), as the followers' cores would. Latency is serial: submit one command,
//! poll until the state machine is told it committed; `lfence; rdtsc` before the submit and
//! `rdtscp; lfence` in the `committed` callback bound each sample. Throughput keeps a window
//! of commands submitted (the leader pipelines up to `pipeline_depth` slots in flight) and,
//! with batching, packs several application commands into one replicated entry.
//!
//! # Invariants
//! - A run fails rather than report figures from a cluster that lost its leader or disagrees:
//!   the leader must stay replica 0 on the fast path throughout, every submitted command must
//!   commit, and after the run every replica must have applied the same entries.
//! - No measurement loop is unbounded: each waits at most [`STALL_LIMIT`], and the polling
//!   thread stops whenever the leader's thread ends, a panic included.
//! - Only a deposed leader is a [`RunError::Deposed`], which a caller may retry; replicas that
//!   disagree, or anything else, is [`RunError::Failed`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mu_nostd::{Shared, SubmitError};
use runtime_linux::clock::{cycles_start, Ticker};

use crate::inproc::{Cluster, Params, Replica, ReplicationSide, Tally};
use mu_nostd::ReplicaId;

/// The longest a run waits for one thing (a leader, a commit) before it gives up.
pub const STALL_LIMIT: Duration = Duration::from_secs(10);
/// Ticks of 1 µs, as the Linux runtime uses.
const TICK_NS: u64 = 1000;
/// Detector read period: the polling thread has a core to itself, but shares it among every
/// background plane and the followers.
pub(crate) const READ_PERIOD_TICKS: u32 = 100;
/// Polls between clock reads on the leader's thread; the core only needs the time for
/// deadlines and periodic work.
pub(crate) const POLLS_PER_CLOCK_READ: u32 = 256;

/// Why a run produced no figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunError {
    /// The leader lost its tenure during the run (a starved thread on a shared host): the run
    /// says nothing about Mu and may be repeated.
    Deposed(String),
    /// Anything else: bad parameters, a cluster that would not start, replicas that disagree.
    Failed(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Deposed(why) | RunError::Failed(why) => f.write_str(why),
        }
    }
}

impl From<String> for RunError {
    fn from(why: String) -> RunError {
        RunError::Failed(why)
    }
}

/// Where the two threads run.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    /// The leader's replication plane.
    pub leader_core: Option<usize>,
    /// Everything else.
    pub others_core: Option<usize>,
}

impl Placement {
    /// The last two cores of this host (the first cores take most interrupts), or none when it
    /// has fewer than two.
    pub fn last_two_cores() -> Placement {
        let mut ids: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        ids.sort_unstable();
        match ids.as_slice() {
            [.., others, leader] => Placement {
                leader_core: Some(*leader),
                others_core: Some(*others),
            },
            _ => Placement {
                leader_core: None,
                others_core: None,
            },
        }
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        match (self.leader_core, self.others_core) {
            (Some(l), Some(o)) => format!(
                "leader's replication plane pinned to core {l}, every other plane polled by one \
                 thread pinned to core {o}"
            ),
            _ => "threads not pinned (fewer than two cores)".into(),
        }
    }
}

/// Pins the calling thread to `core`, if one is given.
pub fn pin(core: Option<usize>) -> Result<(), String> {
    match core {
        Some(id) if !core_affinity::set_for_current(core_affinity::CoreId { id }) => {
            Err(format!("cannot pin a benchmark thread to core {id}"))
        }
        _ => Ok(()),
    }
}

/// Sets `stop` when dropped, so that the polling thread ends however the leader's ends.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Builds a cluster, runs `leader_work` on the leader's pinned thread while another pinned
/// thread polls every other plane, then checks that the replicas agree.
fn with_cluster<T: Send>(
    params: &Params,
    placement: Placement,
    leader_work: impl FnOnce(&mut ReplicationSide<'_>, &Ticker) -> Result<T, RunError> + Send,
) -> Result<T, RunError> {
    with_apps(params, placement, |_| Tally::default(), leader_work).map(|(value, _)| value)
}

/// [`with_cluster`] for any application, replica `id` running `app(id)`; returns the
/// applications too, once their fingerprints agree, for checks of their own.
pub(crate) fn with_apps<A: Replica, T: Send>(
    params: &Params,
    placement: Placement,
    app: impl FnMut(ReplicaId) -> A,
    leader_work: impl FnOnce(&mut ReplicationSide<'_, A>, &Ticker) -> Result<T, RunError> + Send,
) -> Result<(T, Vec<A>), RunError> {
    let shared: Vec<Shared> = (0..params.replicas).map(|_| Shared::new()).collect();
    let mut cluster = Cluster::with_apps(params, &shared, app)?;
    let stop = AtomicBool::new(false);
    let ticker = Ticker::new(TICK_NS);
    let result = {
        let (leader, mut others) = cluster.split(0).expect("replica 0 exists");
        std::thread::scope(|scope| {
            let stop = &stop;
            let polling = scope.spawn(move || {
                let pinned = pin(placement.others_core);
                while !stop.load(Ordering::Relaxed) {
                    others.poll(&ticker);
                }
                pinned
            });
            let work = scope.spawn(move || {
                let _stop = StopOnDrop(stop);
                pin(placement.leader_core)?;
                await_fast_path(leader, &ticker)?;
                let result = leader_work(leader, &ticker);
                // Let the followers catch up with the leader's last slots (they apply a slot once
                // a later write tells them it committed; the commit record covers the last one).
                settle(leader, &ticker);
                result
            });
            let result = work
                .join()
                .unwrap_or_else(|_| Err(RunError::Failed("the leader thread panicked".into())));
            let pinned = polling
                .join()
                .unwrap_or_else(|_| Err("the polling thread panicked".into()));
            result.and_then(|value| pinned.map(|()| value).map_err(RunError::Failed))
        })
    };
    let value = result?;
    await_agreement(&mut cluster, &ticker)?;
    Ok((value, cluster.into_apps()))
}

/// Polls the leader until it is on the fast path.
fn await_fast_path<A: Replica>(
    leader: &mut ReplicationSide<'_, A>,
    ticker: &Ticker,
) -> Result<(), RunError> {
    let started = Instant::now();
    while !leader.plane.status().fast_path {
        leader.poll(ticker.now());
        if started.elapsed() > STALL_LIMIT {
            return Err(RunError::Failed(format!(
                "replica 0 was not on the fast path within {STALL_LIMIT:?}"
            )));
        }
    }
    Ok(())
}

/// Keeps the leader polling briefly, so that its last commit reaches the followers.
fn settle<A: Replica>(leader: &mut ReplicationSide<'_, A>, ticker: &Ticker) {
    let until = Instant::now() + Duration::from_millis(20);
    while Instant::now() < until {
        leader.poll(ticker.now());
    }
}

/// Polls everything from this thread until every replica applied the same entries.
fn await_agreement<A: Replica>(
    cluster: &mut Cluster<'_, A>,
    ticker: &Ticker,
) -> Result<(), String> {
    let started = Instant::now();
    loop {
        cluster.poll_all(ticker.now());
        match cluster.agreement() {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() > STALL_LIMIT => return Err(e),
            Err(_) => {}
        }
    }
}

/// Fails when the leader is no longer on the fast path.
pub(crate) fn still_leading<A: Replica>(leader: &ReplicationSide<'_, A>) -> Result<(), RunError> {
    let status = leader.plane.status();
    let dropped = leader.app.dropped_count();
    if status.fast_path && dropped == 0 {
        Ok(())
    } else {
        Err(RunError::Deposed(format!(
            "replica 0 left the fast path during the run ({status:?}, {dropped} commands dropped); \
             is the polling thread starved?"
        )))
    }
}

/// What a latency run measures.
#[derive(Clone, Copy, Debug)]
pub struct LatencyParams {
    /// Replicas.
    pub replicas: u8,
    /// Command size in bytes (at least 8).
    pub payload: usize,
    /// Unrecorded commands first.
    pub warm_up: u64,
    /// Recorded commands.
    pub samples: u64,
}

/// Serial submit-to-commit latency at the leader, in TSC cycles.
pub fn serial_latency(
    params: &LatencyParams,
    placement: Placement,
) -> Result<Histogram<u64>, RunError> {
    if !(8..=crate::inproc::PAYLOAD_MAX).contains(&params.payload) {
        return Err(RunError::Failed(format!(
            "payload must be 8..={} bytes (commands carry an 8-byte sequence number)",
            crate::inproc::PAYLOAD_MAX
        )));
    }
    let cluster = Params {
        replicas: params.replicas,
        entry_bytes: params.payload,
        pipeline_depth: 8,
        read_period_ticks: READ_PERIOD_TICKS,
    };
    let (warm_up, samples, payload) = (params.warm_up, params.samples, params.payload);
    with_cluster(&cluster, placement, move |leader, ticker| {
        let mut histogram =
            Histogram::<u64>::new_with_bounds(1, 1 << 40, 3).expect("static bounds");
        let mut command = vec![0u8; payload];
        for i in 0..warm_up + samples {
            command[..8].copy_from_slice(&i.to_le_bytes());
            let mut now = ticker.now();
            let started = cycles_start();
            let ticket = leader
                .plane
                .submit(&command)
                .map_err(|e| RunError::Failed(format!("submit: {e:?}")))?;
            let mut polls = 0u32;
            while leader.app.last_ticket != Some(ticket) {
                leader.poll(now);
                polls += 1;
                if polls % POLLS_PER_CLOCK_READ == 0 {
                    now = ticker.now();
                    still_leading(leader)?;
                    if polls % (POLLS_PER_CLOCK_READ * 4096) == 0 {
                        stalled(started)?;
                    }
                }
            }
            if i >= warm_up {
                histogram.saturating_record(
                    leader.app.last_commit_cycles.saturating_sub(started).max(1),
                );
            }
        }
        still_leading(leader)?;
        Ok(histogram)
    })
}

/// Errors once more than [`STALL_LIMIT`] passed since `started_cycles` (the TSC runs at
/// least 1 GHz on any host this runs on, so this bound is generous).
pub(crate) fn stalled(started_cycles: u64) -> Result<(), RunError> {
    let limit = STALL_LIMIT.as_nanos() as u64 * 4;
    if cycles_start().saturating_sub(started_cycles) > limit {
        Err(RunError::Failed(format!(
            "a command did not commit within {STALL_LIMIT:?}"
        )))
    } else {
        Ok(())
    }
}

/// What a throughput run measures.
#[derive(Clone, Copy, Debug)]
pub struct ThroughputParams {
    /// Replicas.
    pub replicas: u8,
    /// Application command size in bytes.
    pub payload: usize,
    /// Commands per replicated entry (1: no batching).
    pub batch: usize,
    /// Entries submitted and not yet committed, at most.
    pub window: usize,
    /// How long to measure.
    pub duration: Duration,
}

/// What a throughput run did.
#[derive(Clone, Copy, Debug)]
pub struct ThroughputRun {
    /// Entries committed in the measured interval.
    pub entries: u64,
    /// Application commands committed (entries × batch).
    pub commands: u64,
    /// The measured interval.
    pub seconds: f64,
}

impl ThroughputRun {
    /// Application commands per second.
    pub fn commands_per_second(&self) -> f64 {
        self.commands as f64 / self.seconds
    }
}

/// Commits as fast as the leader can with `window` entries outstanding.
pub fn throughput(
    params: &ThroughputParams,
    placement: Placement,
) -> Result<ThroughputRun, RunError> {
    let entry_bytes = params
        .payload
        .checked_mul(params.batch)
        .filter(|&bytes| (8..=crate::inproc::PAYLOAD_MAX).contains(&bytes));
    let Some(entry_bytes) = entry_bytes.filter(|_| params.window > 0) else {
        return Err(RunError::Failed(format!(
            "the window must be > 0 and an entry (payload × batch) 8..={} bytes",
            crate::inproc::PAYLOAD_MAX
        )));
    };
    // The latency runs' pipeline, unless the window asks for more.
    let depth = params
        .window
        .clamp(8, mu_nostd::config::PIPELINE_DEPTH_MAX as usize);
    let cluster = Params {
        replicas: params.replicas,
        entry_bytes,
        pipeline_depth: depth as u16,
        read_period_ticks: READ_PERIOD_TICKS,
    };
    let (window, duration, batch) = (params.window as u64, params.duration, params.batch as u64);
    with_cluster(&cluster, placement, move |leader, ticker| {
        let mut entry = vec![0u8; entry_bytes];
        let started = Instant::now();
        let base = leader.app.committed;
        let mut submitted = 0u64;
        let mut polls = 0u32;
        let mut now = ticker.now();
        loop {
            while submitted - (leader.app.committed - base) < window {
                entry[..8].copy_from_slice(&submitted.to_le_bytes());
                match leader.plane.submit(&entry) {
                    Ok(_) => submitted += 1,
                    Err(SubmitError::Busy) => break,
                    Err(e) => return Err(RunError::Failed(format!("submit: {e:?}"))),
                }
            }
            leader.poll(now);
            polls += 1;
            if polls % POLLS_PER_CLOCK_READ == 0 {
                now = ticker.now();
                still_leading(leader)?;
                if started.elapsed() >= duration {
                    break;
                }
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let entries = leader.app.committed - base;
        // The window still in flight must commit too.
        let drain = Instant::now();
        while leader.app.committed - base < submitted {
            leader.poll(ticker.now());
            if drain.elapsed() > STALL_LIMIT {
                return Err(RunError::Failed("the last window did not commit".into()));
            }
        }
        still_leading(leader)?;
        Ok(ThroughputRun {
            entries,
            commands: entries * batch,
            seconds,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_latency_records_every_sample_and_the_replicas_agree() {
        let params = LatencyParams {
            replicas: 3,
            payload: 64,
            warm_up: 100,
            samples: 500,
        };
        let histogram = serial_latency(&params, Placement::last_two_cores()).unwrap();
        assert_eq!(histogram.len(), 500);
        assert!(histogram.min() > 0);
        let short = LatencyParams {
            payload: 7,
            ..params
        };
        assert!(serial_latency(&short, Placement::last_two_cores()).is_err());
    }

    #[test]
    fn throughput_commits_batches_of_commands() {
        let params = ThroughputParams {
            replicas: 5,
            payload: 8,
            batch: 16,
            window: 32,
            duration: Duration::from_millis(50),
        };
        let run = throughput(&params, Placement::last_two_cores()).unwrap();
        assert!(run.entries > 0);
        let short = ThroughputParams {
            payload: 4,
            batch: 1,
            ..params
        };
        assert!(matches!(
            throughput(&short, Placement::last_two_cores()),
            Err(RunError::Failed(_))
        ));
        let too_big = ThroughputParams {
            payload: 4096,
            ..params
        };
        assert!(throughput(&too_big, Placement::last_two_cores()).is_err());
    }
}
