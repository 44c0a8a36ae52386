//! The pull-score failure detector: every replica reads every peer's heartbeat counter; a read
//! that sees the counter move raises the peer's score, a read that sees it unchanged (or a read
//! that does not complete in time) lowers it. Scores are clamped; a peer is declared failed when
//! its score falls below one threshold and alive again when it rises above a higher one.
//!
//! The same read also returns the peer's applied position, which its replication plane
//! publishes: a position that moved is a sign of life as good as a heartbeat. The heartbeat
//! comes from the background plane alone, and a live leader whose background plane waited a
//! few milliseconds for a core (a busy neighbour's time slice) while its replication plane
//! committed on another was deposed for nothing.
//!
//! Why pull: a slow read only slows down how fast "unchanged" observations accumulate, so
//! aggressive thresholds do not cause spurious fail-overs the way a late heartbeat message does.
//!
//! Patience: the observer (the background plane) passes how many unchanged reads in a row cost
//! one point. It starts at 1 (the paper's detector) and grows when a peer declared failed turns
//! out alive soon after (a slow host, not a dead peer), so that a noisy host settles instead of
//! deposing live leaders again and again. A peer that certainly died (its fabric says so) is
//! failed at once with [`PullScore::fail`], whatever the patience.
//!
//! # Invariants
//! - `score <= score_max` always; `unchanged < patience` after every observation.
//! - `alive` changes only across the hysteresis band: to failed when `score < fail_below`, to
//!   alive when `score > recover_above`; or to failed at once by `fail`.
//! - A score rises only on a read whose heartbeat, or whose readable applied position, differs
//!   from the last one seen; a torn applied record neither raises it nor replaces the last one.

use crate::config::DetectorConfig;

/// One peer's pull score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PullScore {
    score: u8,
    alive: bool,
    last_heartbeat: Option<u64>,
    /// The applied position the last read that could decode one showed.
    last_applied: Option<u64>,
    /// Unchanged reads since the last point lost or won.
    unchanged: u8,
}

impl PullScore {
    /// A peer not yet heard from: failed, score 0.
    pub const fn unknown() -> PullScore {
        PullScore {
            score: 0,
            alive: false,
            last_heartbeat: None,
            last_applied: None,
            unchanged: 0,
        }
    }

    /// A peer just verified (its region header matched): alive, just above the recovery
    /// threshold, so a peer that dies right away is detected quickly.
    pub fn verified(config: &DetectorConfig) -> PullScore {
        PullScore {
            score: config.recover_above + 1,
            alive: true,
            last_heartbeat: None,
            last_applied: None,
            unchanged: 0,
        }
    }

    /// True when the peer is considered alive.
    pub const fn alive(&self) -> bool {
        self.alive
    }

    /// The current score.
    pub const fn score(&self) -> u8 {
        self.score
    }

    /// The heartbeat value the last successful read showed.
    pub const fn last_heartbeat(&self) -> Option<u64> {
        self.last_heartbeat
    }

    /// A heartbeat read completed and showed `heartbeat`, and `applied` unless that record was
    /// torn; `patience` unchanged reads in a row cost one point. Either moving is a change;
    /// returns whether there was one.
    pub fn observe(
        &mut self,
        config: &DetectorConfig,
        heartbeat: u64,
        applied: Option<u64>,
        patience: u8,
    ) -> bool {
        let changed = self.last_heartbeat != Some(heartbeat)
            || applied.is_some_and(|a| self.last_applied != Some(a));
        self.last_heartbeat = Some(heartbeat);
        self.last_applied = applied.or(self.last_applied);
        if changed {
            self.raise(config);
        } else {
            self.unchanged(config, patience);
        }
        changed
    }

    /// A heartbeat read did not complete in time: count it as unchanged.
    pub fn miss(&mut self, config: &DetectorConfig, patience: u8) {
        self.unchanged(config, patience);
    }

    /// The peer certainly died: failed now, with no point left.
    pub fn fail(&mut self) {
        self.score = 0;
        self.alive = false;
        self.unchanged = 0;
    }

    fn raise(&mut self, config: &DetectorConfig) {
        self.unchanged = 0;
        self.score = self.score.saturating_add(1).min(config.score_max);
        if !self.alive && self.score > config.recover_above {
            self.alive = true;
        }
        assert!(self.score <= config.score_max);
    }

    fn unchanged(&mut self, config: &DetectorConfig, patience: u8) {
        self.unchanged = self.unchanged.saturating_add(1);
        if self.unchanged < patience.max(1) {
            return;
        }
        self.unchanged = 0;
        self.score = self.score.saturating_sub(1).min(config.score_max);
        if self.alive && self.score < config.fail_below {
            self.alive = false;
        }
        assert!(self.score <= config.score_max);
        assert!(self.unchanged < patience.max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis() {
        let config = DetectorConfig::paper(10);
        let mut p = PullScore::verified(&config);
        assert!(p.alive());
        let mut beat = 0;
        for _ in 0..20 {
            beat += 1;
            p.observe(&config, beat, None, 1);
        }
        assert_eq!(p.score(), config.score_max);
        // 15 -> 1 takes 14 unchanged reads; still alive at 2.
        for _ in 0..13 {
            p.observe(&config, beat, None, 1);
        }
        assert_eq!(p.score(), 2);
        assert!(p.alive());
        p.miss(&config, 1);
        assert!(!p.alive());
        // Recovery needs the score above 6, not just above 2.
        for _ in 0..5 {
            beat += 1;
            p.observe(&config, beat, None, 1);
        }
        assert_eq!(p.score(), 6);
        assert!(!p.alive());
        beat += 1;
        p.observe(&config, beat, None, 1);
        assert!(p.alive());
    }

    #[test]
    fn patience_stretches_suspicion_and_death_cuts_it_short() {
        let config = DetectorConfig::paper(10);
        let mut p = PullScore::verified(&config);
        let start = p.score();
        // Patience 4: three unchanged reads cost nothing, the fourth one point.
        for _ in 0..3 {
            p.miss(&config, 4);
        }
        assert_eq!(p.score(), start);
        p.miss(&config, 4);
        assert_eq!(p.score(), start - 1);
        // A moving heartbeat starts the count again.
        p.observe(&config, 1, None, 4);
        for _ in 0..3 {
            p.observe(&config, 1, None, 4);
        }
        assert_eq!(p.score(), start);
        p.fail();
        assert!(!p.alive());
        assert_eq!(p.score(), 0);
    }

    #[test]
    fn a_moving_applied_position_is_a_sign_of_life() {
        let config = DetectorConfig::paper(10);
        let mut p = PullScore::verified(&config);
        assert!(
            p.observe(&config, 7, Some(100), 1),
            "the first read is news"
        );
        let start = p.score();
        // The heartbeat stands still while the applied position moves: no point lost.
        for applied in 101..140 {
            assert!(p.observe(&config, 7, Some(applied), 1));
        }
        assert!(p.alive());
        assert_eq!(p.score(), config.score_max.min(start + 39));
        // A torn applied record says nothing, neither way.
        assert!(!p.observe(&config, 7, None, 1));
        assert_eq!(p.score(), config.score_max - 1);
        assert!(!p.observe(&config, 7, Some(139), 1));
        assert_eq!(
            p.score(),
            config.score_max - 2,
            "139 was seen before the torn read"
        );
        // Both standing still: the peer is failed as before.
        for _ in 0..config.score_max {
            p.observe(&config, 7, Some(139), 1);
        }
        assert!(!p.alive());
    }
}
