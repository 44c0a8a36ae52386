//! Writing a deployment back out in the schema `read` accepts.

use crate::{Deployment, FabricSpec, Host, Polling};
use mu_nostd::DetectorConfig;
use std::fmt::Write as _;

/// A TOML string literal, escaped by toml_edit itself.
fn quote(s: &str) -> String {
    toml_edit::Value::from(s).to_string()
}

pub(crate) fn deployment(d: &Deployment) -> String {
    let c = &d.cluster.config;
    let det = &c.detector;
    let mut out = String::new();
    // `write!` into a String cannot fail.
    let _ = write!(
        out,
        "[cluster]\n\
         name = {}\n\
         replicas = {}\n\
         tick_ns = {}\n\
         slot_count = {}\n\
         slot_size = {}\n\
         entry_slots_max = {}\n\
         pipeline_depth = {}\n\
         op_timeout_ticks = {}\n\
         permission_retry_ticks = {}\n\
         recycle_period_ticks = {}\n\
         transfer_chunk_bytes = {}\n\
         transfer_window = {}\n\
         \n\
         [cluster.detector]\n\
         read_period_ticks = {}\n",
        quote(&d.cluster.name),
        c.replica_count,
        d.cluster.tick_ns,
        c.slot_count,
        c.slot_size,
        c.entry_slots_max,
        c.pipeline_depth,
        c.op_timeout_ticks,
        c.permission_retry_ticks,
        c.recycle_period_ticks,
        c.transfer_chunk_bytes,
        c.transfer_window,
        det.read_period_ticks,
    );
    // Only the detector values that differ from their defaults, so a file stays short.
    let paper = DetectorConfig::paper(det.read_period_ticks);
    let overrides: [(&str, u32, u32); 6] = [
        (
            "heartbeat_period_ticks",
            det.heartbeat_period_ticks,
            paper.heartbeat_period_ticks,
        ),
        (
            "read_timeout_ticks",
            det.read_timeout_ticks,
            paper.read_timeout_ticks,
        ),
        ("score_max", det.score_max.into(), paper.score_max.into()),
        ("fail_below", det.fail_below.into(), paper.fail_below.into()),
        (
            "recover_above",
            det.recover_above.into(),
            paper.recover_above.into(),
        ),
        ("fate_ticks", det.fate_ticks, paper.fate_ticks),
    ];
    for (key, value, default) in overrides {
        if value != default {
            let _ = writeln!(out, "{key} = {value}");
        }
    }
    for r in &d.replicas {
        let _ = write!(out, "\n[[replica]]\nid = {}\n", r.id);
        match &r.host {
            Host::Linux(l) => {
                out.push_str("[replica.linux]\n");
                match &l.fabric {
                    FabricSpec::Shm { dir } => {
                        let _ = writeln!(
                            out,
                            "fabric = \"shm\"\nshm_dir = {}",
                            quote(&dir.to_string_lossy())
                        );
                    }
                    FabricSpec::Verbs {
                        dir,
                        device,
                        port,
                        gid_index,
                        address,
                    } => {
                        let _ = writeln!(
                            out,
                            "fabric = \"verbs\"\nshm_dir = {}\ndevice = {}\nport = {port}\n\
                             gid_index = {gid_index}\naddress = {}",
                            quote(&dir.to_string_lossy()),
                            quote(device),
                            quote(address)
                        );
                    }
                }
                if let Some(core) = l.replication_core {
                    let _ = writeln!(out, "replication_core = {core}");
                }
                if let Some(core) = l.background_core {
                    let _ = writeln!(out, "background_core = {core}");
                }
                let polling = match l.polling {
                    Polling::Busy => "busy",
                    Polling::Shared => "shared",
                };
                let _ = writeln!(out, "polling = \"{polling}\"");
                if let Some(priority) = l.realtime_priority {
                    let _ = writeln!(out, "realtime_priority = {priority}");
                }
                if let Some(serve) = l.serve {
                    let _ = writeln!(out, "serve = {}", quote(&serve.to_string()));
                }
            }
            Host::Firmware(f) => {
                let _ = writeln!(
                    out,
                    "[replica.firmware]\nboard = {}\nram_base = {:#x}\nram_size = {:#x}\n\
                     window_base = {:#x}\nwindow_size = {:#x}",
                    quote(&f.board),
                    f.ram_base,
                    f.ram_size,
                    f.window_base,
                    f.window_size
                );
            }
        }
    }
    out
}
