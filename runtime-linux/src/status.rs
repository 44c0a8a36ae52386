//! `mu status`: every replica of a running cluster on this host, one line each, from the status
//! words of its client port ([`crate::port::Stat`]): role and leader, how far it applied, and
//! the counters that explain trouble (tenures, permission switches, refused slots and where a
//! replay is blocked, lap notices, state transfers, refused peers, peers failed).
//!
//! # Invariants
//! - It only reads ports: a status never changes a replica.

use std::fmt::Write as _;
use std::path::Path;

use mu_nostd::config::REPLICAS_MAX;

use crate::port::{Port, Stat};

/// The column titles, and what each means, for the footer.
const COLUMNS: &str = "id   pid      role       view applied      tenures switches torn  unch. \
                       blocked         lapN  xfers  alive    refused";

/// One line per replica whose port exists in `dir`, under a header; `None` when there is none.
pub fn render(dir: &Path) -> Option<String> {
    let ports: Vec<(u8, Port)> = (0..REPLICAS_MAX)
        .filter_map(|id| Port::attach(dir, id).ok().map(|port| (id, port)))
        .collect();
    if ports.is_empty() {
        return None;
    }
    let mut out = String::new();
    let _ = writeln!(out, "{COLUMNS}");
    for (id, port) in &ports {
        let _ = writeln!(out, "{}", line(*id, port));
    }
    Some(out)
}

/// What one replica's port says.
fn line(id: u8, p: &Port) -> String {
    let alive_pid = p.get(Stat::Pid) as i32;
    // A port left by a dead process still holds its last words: say so.
    let running = alive_pid > 0
        && nix::sys::signal::kill(nix::unistd::Pid::from_raw(alive_pid), None).is_ok();
    let role = if !running {
        "dead"
    } else if p.get(Stat::Halted) != 0 {
        "halted"
    } else if p.get(Stat::FastPath) == 1 {
        "leader"
    } else if p.get(Stat::Leading) != 0 {
        "preparing"
    } else if p.get(Stat::CatchingUp) == 1 {
        "installing"
    } else if p.get(Stat::Voter) == 0 {
        "recovering"
    } else {
        "follower"
    };
    let view = p.leader_view().map_or("-".to_string(), |id| id.to_string());
    let blocked = p
        .blocked()
        .map_or("-".to_string(), |(at, why)| format!("{at} {}", why.name()));
    format!(
        "{id:<4} {:<8} {role:<10} {view:<4} {:<12} {:<7} {:<8} {:<5} {:<6} {blocked:<15} {:<5} \
         {:<6} {:#09b} {:#09b}",
        alive_pid,
        p.get(Stat::Applied),
        p.get(Stat::Tenures),
        p.get(Stat::PermissionSwitches),
        p.get(Stat::SlotsTorn),
        p.get(Stat::SlotsUnchained),
        p.get(Stat::LapNotices),
        format!("{}/{}", p.get(Stat::Transfers), p.get(Stat::Installs)),
        p.get(Stat::Alive),
        p.get(Stat::RefusedPeers),
    )
}

/// What the columns mean, printed under the table.
pub const LEGEND: &str = "view: who it considers leader; tenures: tenures it started; \
switches: grants of its log it made; torn/unch.: slots its replays stopped at (value torn or \
damaged / not chained to what it applied), once per slot; blocked: where its replay waits now; \
lapN: lap notices taken; xfers: state transfers started/installed; alive, refused: peers by bit";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_renders_its_counters_and_a_missing_cluster_none() {
        let dir = std::env::temp_dir().join(format!("mu-status-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(render(&dir), None);
        let port = Port::create(&dir, 1, 3).unwrap();
        port.set(Stat::Voter, 1);
        port.set(Stat::LeaderView, 3);
        port.set(Stat::Applied, 4242);
        port.set(Stat::SlotsTorn, 7);
        port.set(Stat::BlockedAt, 4243);
        port.set(Stat::BlockedWhy, mu_nostd::Blocked::Torn.code() as u64);
        let text = render(&dir).unwrap();
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("1    "), "{row}");
        assert!(row.contains("follower") && row.contains("4242") && row.contains("4242 torn"));
        assert!(row.contains(" 7 "), "{row}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
