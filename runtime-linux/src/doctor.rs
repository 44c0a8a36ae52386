//! `mu doctor`: what this host offers a verbs (RDMA) deployment, and what it still lacks.
//!
//! The report lists the RDMA devices (limits, ports, GID tables with the index to put in a
//! replica's `gid_index`), what a test queue pair gets (the inline limit, which no attribute
//! states), the memory-lock limit against what a replica of the `mu demo` configuration
//! registers, isolated cores, huge pages and the kernel's RDMA support. It ends with a verdict:
//! what blocks a deployment ("missing") and what is only advice.
//!
//! Probing gathers plain data (`DeviceProbe`, `PortProbe`, `GidEntry`, ...); writing and
//! judging are functions of that data alone, so they are tested without a device. Nothing here
//! panics when there is no device, no sysfs entry or no `/proc` file: each missing piece becomes
//! a line of the report.

use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;

use board_configs::Polling;
use mu_nostd::{Config, Layout};
use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
use rdma_sys::{ibv_mtu, ibv_port_state};

use crate::procfs::IsolatedCores;
use crate::verbs::ibv::{self, Context, DeviceAttr, DeviceList, PortAttr};
use crate::verbs::{completion_entries, queue_pairs, registrations, DEPTH, REGISTRATIONS};

/// Inline bytes the test queue pair asks for: more than the fabric sends inline, so what the
/// device grants (up to this) is its real limit.
const INLINE_ASK: u32 = 256;
/// Replicas and payload bytes of the `mu demo` defaults, the configuration the memory figures
/// are computed for.
const DEMO_REPLICAS: u8 = 3;
const DEMO_PAYLOAD: usize = 64;
/// Room for queue buffers on top of the registrations: providers that pin their queues (mlx5)
/// count them against the same limit; a replica's queues take a few hundred KiB at most.
const QUEUE_HEADROOM: u64 = 1 << 20;
/// `CAP_IPC_LOCK`'s bit in `/proc/self/status`'s `CapEff`: a process holding it may pin memory
/// beyond the memlock limit.
const CAP_IPC_LOCK: u32 = 14;
/// Kernel modules worth naming: user-space verbs access, and Soft-RoCE.
const MODULES: [&str; 2] = ["ib_uverbs", "rdma_rxe"];
const SYSFS_CLASS: &str = "/sys/class/infiniband";
const DEV_DIR: &str = "/dev/infiniband";

/// Prints the report; returns Ok(true) when this host is ready for a verbs deployment, Ok(false)
/// when something is missing (the report says what), Err only for unexpected failures.
pub fn doctor(out: &mut impl Write) -> io::Result<bool> {
    let config = crate::demo::cluster_config(DEMO_REPLICAS, DEMO_PAYLOAD, Polling::Shared, None);
    let needs = ReplicaNeeds::of(&config);
    let kernel = KernelSupport::detect();
    let devices = probe_devices();
    let mut findings = Findings::default();

    writeln!(out, "mu doctor: this host and a verbs deployment")?;
    write_devices(out, &devices)?;
    judge_devices(&devices, &kernel, &needs, &mut findings);
    write_memlock(out, &needs, &mut findings)?;
    write_cores(out, &mut findings)?;
    write_huge_pages(out, &mut findings)?;
    write_shared_memory_barrier(out, &mut findings)?;
    write_kernel(out, &kernel)?;
    write_verdict(out, &findings)
}

// ---------------------------------------------------------------------------------------------
// Findings and verdict

/// What the sections found that matters for the verdict.
#[derive(Debug, Default)]
struct Findings {
    /// Each one alone stops a deployment.
    blockers: Vec<String>,
    /// Worth doing, not required.
    advice: Vec<String>,
    /// Where a replica on this host should send from, when some device can.
    choice: Option<Choice>,
}

/// The device, port and GID index a replica should name in its `[replica.linux]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Choice {
    device: String,
    port: u8,
    gid_index: u8,
    /// The GID's IPv4 address, which is also where the handshakes can go (`--ip`).
    ipv4: Option<Ipv4Addr>,
}

fn write_verdict(out: &mut impl Write, findings: &Findings) -> io::Result<bool> {
    writeln!(out, "\nfor a verbs deployment:")?;
    for blocker in &findings.blockers {
        writeln!(out, "  missing: {blocker}")?;
    }
    for advice in &findings.advice {
        writeln!(out, "  advice: {advice}")?;
    }
    let ready = findings.blockers.is_empty();
    match (&findings.choice, ready) {
        (Some(c), true) => write_ready(out, c)?,
        _ => writeln!(out, "  not ready: fix what is missing above")?,
    }
    Ok(ready)
}

/// Where the choice goes: a deployment file's keys, and the flags of `mu demo`.
fn write_ready(out: &mut impl Write, c: &Choice) -> io::Result<()> {
    writeln!(
        out,
        "  ready: in [replica.linux] put device = \"{}\", port = {}, gid_index = {}",
        c.device, c.port, c.gid_index
    )?;
    let ip = c.ipv4.map(|ip| format!(" --ip {ip}")).unwrap_or_default();
    writeln!(
        out,
        "  or try: mu demo --fabric verbs --device {} --port {} --gid-index {}{ip}",
        c.device, c.port, c.gid_index
    )
}

// ---------------------------------------------------------------------------------------------
// What a replica needs

/// What one replica of a configuration asks of the device and of the memlock limit: what
/// `verbs::Endpoint::open` creates, from the same functions.
#[derive(Clone, Debug)]
struct ReplicaNeeds {
    replicas: u8,
    region_bytes: u64,
    /// The region file: a control page and the region rounded up to whole pages.
    file_bytes: u64,
    /// Bytes the registrations pin. Each registration counts against the limit on its own, so
    /// overlapping ones (the whole region, and the areas peers get) count each time.
    pinned_bytes: u64,
    /// Requester and responder queue pairs, per peer and plane.
    queue_pairs: u32,
    /// Entries of each plane's completion queue.
    cq_entries: u32,
}

impl ReplicaNeeds {
    fn of(config: &Config) -> ReplicaNeeds {
        let layout = Layout::new(config);
        let page = crate::mem::page_size() as u64;
        ReplicaNeeds {
            replicas: config.replica_count,
            region_bytes: layout.region_bytes.into(),
            file_bytes: crate::shm::file_bytes(config) as u64,
            pinned_bytes: registrations(&layout)
                .iter()
                .map(|r| pinned(r.start.into(), r.end.into(), page))
                .sum(),
            queue_pairs: queue_pairs(config.replica_count),
            cq_entries: completion_entries(config.replica_count),
        }
    }

    /// The memlock limit a replica needs: its registrations and room for its queues.
    fn memlock_bytes(&self) -> u64 {
        self.pinned_bytes + QUEUE_HEADROOM
    }
}

/// Bytes of whole pages covering `start..end` of a page-aligned region: registration pins pages.
fn pinned(start: u64, end: u64, page: u64) -> u64 {
    if end <= start {
        return 0;
    }
    (end.div_ceil(page) - start / page) * page
}

// ---------------------------------------------------------------------------------------------
// RDMA devices: probing

/// What one device told.
#[derive(Clone, Debug)]
struct DeviceProbe {
    name: String,
    /// Its limits, or why it could not be opened or queried (then nothing else is known).
    attr: Result<DeviceAttr, String>,
    ports: Vec<PortProbe>,
    /// The inline limit a test queue pair got, or why one could not be created.
    queue_pair: Result<u32, String>,
}

/// What one port told.
#[derive(Clone, Debug)]
struct PortProbe {
    number: u8,
    attr: Result<PortAttr, String>,
    /// The non-empty GID table entries.
    gids: Vec<GidEntry>,
}

/// A non-empty GID table entry.
#[derive(Clone, Debug)]
struct GidEntry {
    index: u8,
    gid: [u8; 16],
    /// From sysfs, e.g. "RoCE v2" or "IB/RoCE v1"; None where the kernel does not say.
    kind: Option<String>,
    /// The network interface it belongs to (RoCE), from sysfs.
    ndev: Option<String>,
}

/// Every device, or why they could not be listed.
fn probe_devices() -> Result<Vec<DeviceProbe>, String> {
    let list = DeviceList::get().map_err(|e| e.to_string())?;
    Ok(list
        .names()
        .into_iter()
        .map(|name| probe_device(&list, name))
        .collect())
}

fn probe_device(list: &DeviceList, name: String) -> DeviceProbe {
    let context = match list.open(&name) {
        Ok(context) => context,
        Err(e) => {
            return DeviceProbe {
                name,
                attr: Err(e.to_string()),
                ports: Vec::new(),
                queue_pair: Err("the device could not be opened".into()),
            }
        }
    };
    let attr = context.device_attr().map_err(|e| e.to_string());
    let (ports, queue_pair) = match &attr {
        Ok(a) => (
            (1..=a.ports).map(|p| probe_port(&context, p)).collect(),
            test_queue_pair(&context, a),
        ),
        Err(_) => (Vec::new(), Err("the device could not be queried".into())),
    };
    DeviceProbe {
        name,
        attr,
        ports,
        queue_pair,
    }
}

fn probe_port(context: &Context, number: u8) -> PortProbe {
    let attr = context.port_attr(number).map_err(|e| e.to_string());
    let gids = match &attr {
        Ok(a) => gid_table(context, number, a.gid_table_len),
        Err(_) => Vec::new(),
    };
    PortProbe { number, attr, gids }
}

/// The non-empty entries of a port's GID table. Indices past 255 cannot be named in a
/// configuration (`gid_index` is a byte), so the walk stops there.
fn gid_table(context: &Context, port: u8, len: i32) -> Vec<GidEntry> {
    let len = usize::try_from(len).unwrap_or(0);
    (0..=u8::MAX)
        .take(len)
        .filter_map(|index| {
            // An entry that cannot be read is as good as empty for a deployment.
            let gid = context.gid(port, index).ok()?;
            (gid != [0; 16]).then(|| GidEntry {
                index,
                gid,
                kind: gid_attr(context.name(), port, "types", index),
                ndev: gid_attr(context.name(), port, "ndevs", index),
            })
        })
        .collect()
}

/// A GID attribute from sysfs (`types` or `ndevs`); unused entries read as an error: None.
fn gid_attr(device: &str, port: u8, attr: &str, index: u8) -> Option<String> {
    let path = format!("{SYSFS_CLASS}/{device}/ports/{port}/gid_attrs/{attr}/{index}");
    let text = fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// Creates a protection domain, a completion queue and a queue pair like the fabric's, asking
/// for [`INLINE_ASK`] bytes inline: only creating a queue pair tells the inline limit.
fn test_queue_pair(context: &Arc<Context>, attr: &DeviceAttr) -> Result<u32, String> {
    let depth = DEPTH.min(u32::try_from(attr.max_qp_wr).unwrap_or(0)).max(1);
    let pd = ibv::Pd::new(context).map_err(|e| e.to_string())?;
    let cq = ibv::Cq::new(context, 16).map_err(|e| e.to_string())?;
    let qp = ibv::Qp::new(&pd, &cq, &cq, depth, INLINE_ASK).map_err(|e| e.to_string())?;
    Ok(qp.max_inline())
}

// ---------------------------------------------------------------------------------------------
// RDMA devices: writing

fn write_devices(
    out: &mut impl Write,
    devices: &Result<Vec<DeviceProbe>, String>,
) -> io::Result<()> {
    writeln!(out, "\nRDMA devices")?;
    match devices {
        Err(e) => writeln!(out, "  none: listing RDMA devices failed: {e}"),
        Ok(list) if list.is_empty() => writeln!(out, "  none: no RDMA device on this host"),
        Ok(list) => list.iter().try_for_each(|d| write_device(out, d)),
    }
}

fn write_device(out: &mut impl Write, device: &DeviceProbe) -> io::Result<()> {
    let attr = match &device.attr {
        Ok(attr) => attr,
        Err(e) => return writeln!(out, "  {}: {e}", device.name),
    };
    writeln!(
        out,
        "  {}: firmware {}, {} port(s)",
        device.name,
        or_unknown(&attr.firmware),
        attr.ports
    )?;
    write_limits(out, attr)?;
    match &device.queue_pair {
        Ok(inline) => writeln!(
            out,
            "    test queue pair: writes up to {inline} bytes go inline (asked for {INLINE_ASK})"
        )?,
        Err(e) => writeln!(out, "    test queue pair: failed: {e}")?,
    }
    device.ports.iter().try_for_each(|p| write_port(out, p))
}

fn or_unknown(text: &str) -> &str {
    if text.is_empty() {
        "unknown"
    } else {
        text
    }
}

fn write_limits(out: &mut impl Write, attr: &DeviceAttr) -> io::Result<()> {
    writeln!(
        out,
        "    queue pairs: {} of up to {} work requests (queue depth); completion queues of up to \
         {} entries",
        attr.max_qp, attr.max_qp_wr, attr.max_cqe
    )?;
    writeln!(
        out,
        "    memory regions: {} of up to {}; RDMA-read depth: {} outstanding reads per queue pair",
        attr.max_mr,
        size(attr.max_mr_size),
        attr.max_qp_rd_atom
    )
}

fn write_port(out: &mut impl Write, port: &PortProbe) -> io::Result<()> {
    let attr = match &port.attr {
        Ok(attr) => attr,
        Err(e) => return writeln!(out, "    port {}: {e}", port.number),
    };
    let mtu = mtu_bytes(attr.active_mtu).map_or_else(
        || format!("unknown ({})", attr.active_mtu),
        |b| b.to_string(),
    );
    writeln!(
        out,
        "    port {}: {}, {}, MTU {mtu} bytes, LID {}",
        port.number,
        port_state_name(attr.state),
        link_layer_name(attr.link_layer),
        attr.lid
    )?;
    if port.gids.is_empty() {
        writeln!(
            out,
            "      GID table: empty ({} entries)",
            attr.gid_table_len
        )?;
    }
    port.gids.iter().try_for_each(|g| write_gid(out, g))?;
    if let Some(best) = best_gid(attr.link_layer, &port.gids) {
        writeln!(
            out,
            "      gid_index to use: {} ({})",
            best.index,
            gid_reason(attr.link_layer, best)
        )?;
    }
    Ok(())
}

fn write_gid(out: &mut impl Write, gid: &GidEntry) -> io::Result<()> {
    let mut line = format!("      GID {:>3}: {}", gid.index, format_gid(&gid.gid));
    for extra in [&gid.kind, &gid.ndev].into_iter().flatten() {
        line.push_str(", ");
        line.push_str(extra);
    }
    writeln!(out, "{line}")
}

/// A GID as the IPv6 address it is, with the IPv4 address when it is IPv4-mapped (RoCE v2 on an
/// IPv4 interface).
fn format_gid(gid: &[u8; 16]) -> String {
    let address = Ipv6Addr::from(*gid);
    match address.to_ipv4_mapped() {
        Some(v4) => format!("{address} (IPv4 {v4})"),
        None => address.to_string(),
    }
}

/// An `ibv_mtu` in bytes.
fn mtu_bytes(mtu: u32) -> Option<u32> {
    match mtu {
        ibv_mtu::IBV_MTU_256 => Some(256),
        ibv_mtu::IBV_MTU_512 => Some(512),
        ibv_mtu::IBV_MTU_1024 => Some(1024),
        ibv_mtu::IBV_MTU_2048 => Some(2048),
        ibv_mtu::IBV_MTU_4096 => Some(4096),
        _ => None,
    }
}

/// An `IBV_PORT_*` state in words.
fn port_state_name(state: u32) -> String {
    match state {
        ibv_port_state::IBV_PORT_NOP => "NOP".into(),
        ibv_port_state::IBV_PORT_DOWN => "DOWN".into(),
        ibv_port_state::IBV_PORT_INIT => "INIT".into(),
        ibv_port_state::IBV_PORT_ARMED => "ARMED".into(),
        ibv_port_state::IBV_PORT_ACTIVE => "ACTIVE".into(),
        ibv_port_state::IBV_PORT_ACTIVE_DEFER => "ACTIVE_DEFER".into(),
        other => format!("state {other}"),
    }
}

fn link_layer_name(link_layer: u8) -> &'static str {
    match link_layer {
        ibv::LINK_LAYER_INFINIBAND => "InfiniBand",
        ibv::LINK_LAYER_ETHERNET => "Ethernet (RoCE)",
        _ => "unknown link layer",
    }
}

/// Sizes in binary units, exact below 1 KiB.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

// ---------------------------------------------------------------------------------------------
// RDMA devices: judging

/// How well a GID suits Mu's connections; higher is better. On RoCE, v2 (routable, UDP) beats
/// v1, an IPv4 address beats IPv6 (the usual RoCE v2 setup), and a global address beats a
/// link-local one. On InfiniBand every entry works; the lowest index (the port GID) is chosen.
fn gid_score(link_layer: u8, gid: &GidEntry) -> u8 {
    if link_layer != ibv::LINK_LAYER_ETHERNET {
        return 0;
    }
    let address = Ipv6Addr::from(gid.gid);
    let v2 = gid.kind.as_deref().is_some_and(|k| k.contains("v2"));
    let v4 = address.to_ipv4_mapped().is_some();
    let global = !address.is_unicast_link_local();
    4 * u8::from(v2) + 2 * u8::from(v4) + u8::from(global)
}

/// The entry to put in `gid_index`: the best score, the lowest index among equals.
fn best_gid(link_layer: u8, gids: &[GidEntry]) -> Option<&GidEntry> {
    gids.iter()
        .max_by_key(|g| (gid_score(link_layer, g), std::cmp::Reverse(g.index)))
}

fn gid_reason(link_layer: u8, gid: &GidEntry) -> String {
    if link_layer != ibv::LINK_LAYER_ETHERNET {
        return "InfiniBand: every GID works, the first is taken".into();
    }
    let address = Ipv6Addr::from(gid.gid);
    let family = if address.to_ipv4_mapped().is_some() {
        "an IPv4 address"
    } else if address.is_unicast_link_local() {
        "a link-local IPv6 address"
    } else {
        "an IPv6 address"
    };
    format!(
        "{} with {family}",
        gid.kind.as_deref().unwrap_or("RoCE, type unknown")
    )
}

/// Where a replica can send from on this device: the first ACTIVE port with a GID.
fn usable_port(device: &DeviceProbe) -> Option<Choice> {
    device.ports.iter().find_map(|port| {
        let attr = port.attr.as_ref().ok().filter(|a| a.active())?;
        let gid = best_gid(attr.link_layer, &port.gids)?;
        Some(Choice {
            device: device.name.clone(),
            port: port.number,
            gid_index: gid.index,
            ipv4: Ipv6Addr::from(gid.gid).to_ipv4_mapped(),
        })
    })
}

/// Why this device cannot carry a replica; empty when it can.
fn device_problems(device: &DeviceProbe, needs: &ReplicaNeeds) -> Vec<String> {
    let name = &device.name;
    let attr = match &device.attr {
        Ok(attr) => attr,
        Err(e) => return vec![format!("{name}: {e}")],
    };
    let mut problems = port_problems(device);
    problems.extend(
        shortfalls(attr, needs)
            .into_iter()
            .map(|s| format!("{name}: {s}")),
    );
    if let Err(e) = &device.queue_pair {
        problems.push(format!("{name}: cannot create a queue pair: {e}"));
    }
    problems
}

/// Why no port of this device can carry traffic; empty when one can.
fn port_problems(device: &DeviceProbe) -> Vec<String> {
    if usable_port(device).is_some() {
        return Vec::new();
    }
    let name = &device.name;
    let active: Vec<&PortProbe> = device
        .ports
        .iter()
        .filter(|p| p.attr.as_ref().is_ok_and(|a| a.active()))
        .collect();
    if active.is_empty() {
        let states: Vec<String> = device.ports.iter().map(port_summary).collect();
        return vec![format!(
            "{name}: no port is ACTIVE ({}): bring the link up (`ip link set <iface> up`, the \
             cable, a subnet manager on InfiniBand)",
            if states.is_empty() {
                "no ports".into()
            } else {
                states.join("; ")
            }
        )];
    }
    active
        .iter()
        .map(|p| {
            format!(
                "{name}: port {} is ACTIVE but has no usable GID: give its network interface an \
                 IP address (RoCE) or check the subnet manager (InfiniBand)",
                p.number
            )
        })
        .collect()
}

fn port_summary(port: &PortProbe) -> String {
    match &port.attr {
        Ok(a) => format!("port {} {}", port.number, port_state_name(a.state)),
        Err(e) => format!("port {}: {e}", port.number),
    }
}

/// Where the device's limits are below what a replica creates.
fn shortfalls(attr: &DeviceAttr, needs: &ReplicaNeeds) -> Vec<String> {
    let mut short = Vec::new();
    let mut need = |have: i64, want: i64, what: &str| {
        if have < want {
            short.push(format!(
                "{what}: the device allows {have}, a replica needs {want}"
            ));
        }
    };
    need(
        attr.max_qp_wr.into(),
        DEPTH.into(),
        "work requests per queue pair",
    );
    need(
        attr.max_cqe.into(),
        needs.cq_entries.into(),
        "completion queue entries",
    );
    need(attr.max_qp.into(), needs.queue_pairs.into(), "queue pairs");
    need(attr.max_mr.into(), REGISTRATIONS as i64, "memory regions");
    need(
        attr.max_qp_rd_atom.into(),
        1,
        "outstanding RDMA reads per queue pair",
    );
    if attr.max_mr_size < needs.region_bytes {
        short.push(format!(
            "memory region size: the device allows {}, a replica registers {}",
            size(attr.max_mr_size),
            size(needs.region_bytes)
        ));
    }
    short
}

/// The verdict on the devices: a choice when one can carry a replica, blockers when none can,
/// and the other devices' problems as advice.
fn judge_devices(
    devices: &Result<Vec<DeviceProbe>, String>,
    kernel: &KernelSupport,
    needs: &ReplicaNeeds,
    findings: &mut Findings,
) {
    let list = match devices {
        Ok(list) if !list.is_empty() => list,
        Ok(_) => {
            findings.blockers.push(no_device(kernel, None));
            return;
        }
        Err(e) => {
            findings.blockers.push(no_device(kernel, Some(e.as_str())));
            return;
        }
    };
    let problems: Vec<Vec<String>> = list.iter().map(|d| device_problems(d, needs)).collect();
    let usable = list
        .iter()
        .zip(&problems)
        .find(|(_, p)| p.is_empty())
        .and_then(|(d, _)| usable_port(d));
    let others = problems.into_iter().flatten();
    match usable {
        Some(choice) => {
            findings
                .advice
                .extend(others.map(|p| format!("not used: {p}")));
            findings.choice = Some(choice);
        }
        None => findings.blockers.extend(others),
    }
}

/// The blocker when there is no device, with what the kernel side suggests.
fn no_device(kernel: &KernelSupport, listing_error: Option<&str>) -> String {
    let mut text = match listing_error {
        Some(e) => format!("listing RDMA devices failed ({e}), so no RDMA device can be used"),
        None => "no RDMA device on this host".into(),
    };
    text.push_str(
        ": install an RDMA NIC and its driver, or create a Soft-RoCE link: `modprobe rdma_rxe && \
         rdma link add rxe0 type rxe netdev <iface>`",
    );
    if kernel.sysfs_class && kernel.uverbs.is_empty() {
        text.push_str(
            " (the kernel has RDMA devices but no /dev/infiniband/uverbs*: `modprobe ib_uverbs`, \
             or pass /dev/infiniband into the container)",
        );
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Memory locking

/// What `/proc/self/status` says about who this process is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Identity {
    /// Effective user id.
    uid: Option<u32>,
    /// Whether `CAP_IPC_LOCK` is effective.
    ipc_lock: Option<bool>,
}

fn parse_status(text: &str) -> Identity {
    let mut identity = Identity::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let mut fields = value.split_whitespace();
        match key {
            // Real, effective, saved, filesystem: the effective one decides.
            "Uid" => identity.uid = fields.nth(1).and_then(|u| u.parse().ok()),
            "CapEff" => {
                identity.ipc_lock = fields
                    .next()
                    .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                    .map(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
            }
            _ => {}
        }
    }
    identity
}

/// A memlock limit in words.
fn limit_text(limit: u64) -> String {
    if limit == RLIM_INFINITY {
        "unlimited".into()
    } else {
        size(limit)
    }
}

/// How the memlock limit compares with what a replica pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemlockFit {
    /// Unlimited, or at least what a replica needs.
    Enough,
    /// Too small, but `CAP_IPC_LOCK` lets this process pin past it.
    LiftedByCapability,
    /// Registrations would fail.
    TooSmall,
}

fn memlock_fit(soft: u64, identity: Identity, needs: &ReplicaNeeds) -> MemlockFit {
    if soft == RLIM_INFINITY || soft >= needs.memlock_bytes() {
        MemlockFit::Enough
    } else if identity.ipc_lock == Some(true) {
        MemlockFit::LiftedByCapability
    } else {
        MemlockFit::TooSmall
    }
}

/// The report line's conclusion, and the finding: a blocker when too small, advice when only
/// the capability carries it (replicas started without it, as another user or in another
/// container, would fail).
fn memlock_judgement(
    fit: MemlockFit,
    soft: u64,
    needs: &ReplicaNeeds,
) -> (&'static str, Option<String>) {
    let fix = "run `ulimit -l unlimited` before starting replicas (or set memlock in \
               /etc/security/limits.conf, or LimitMEMLOCK= in a systemd unit)";
    let short = format!(
        "the memlock limit ({}) is below the {} a replica pins",
        limit_text(soft),
        size(needs.memlock_bytes())
    );
    match fit {
        MemlockFit::Enough => ("enough", None),
        MemlockFit::LiftedByCapability => (
            "too small, but CAP_IPC_LOCK lifts it",
            Some(format!("{short}; only CAP_IPC_LOCK makes it work: {fix}")),
        ),
        MemlockFit::TooSmall => (
            "too small",
            Some(format!("{short}: {fix}, or grant CAP_IPC_LOCK")),
        ),
    }
}

fn write_memlock(
    out: &mut impl Write,
    needs: &ReplicaNeeds,
    findings: &mut Findings,
) -> io::Result<()> {
    writeln!(
        out,
        "\nmemory locking (registered memory is pinned and counts against the limit)"
    )?;
    let identity = fs::read_to_string("/proc/self/status")
        .map(|text| parse_status(&text))
        .unwrap_or_default();
    let uid = identity
        .uid
        .map_or_else(|| "unknown".into(), |u| u.to_string());
    let cap = match identity.ipc_lock {
        Some(true) => "CAP_IPC_LOCK held: the limit does not bind this process",
        Some(false) => "no CAP_IPC_LOCK: the limit binds this process, root or not",
        None => "CAP_IPC_LOCK unknown",
    };
    writeln!(out, "  this process: uid {uid}; {cap}")?;
    writeln!(
        out,
        "  a replica of the `mu demo` configuration ({} replicas, {DEMO_PAYLOAD}-byte payloads): \
         region {}, region file {}; its {REGISTRATIONS} registrations pin {} (they overlap, and \
         each counts); with its queues it needs {}",
        needs.replicas,
        size(needs.region_bytes),
        size(needs.file_bytes),
        size(needs.pinned_bytes),
        size(needs.memlock_bytes())
    )?;
    let (soft, hard) = match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok(limits) => limits,
        Err(e) => return writeln!(out, "  memlock limit: unknown ({e})"),
    };
    let fit = memlock_fit(soft, identity, needs);
    let (conclusion, finding) = memlock_judgement(fit, soft, needs);
    writeln!(
        out,
        "  memlock limit (ulimit -l): {} (hard limit {}): {conclusion}",
        limit_text(soft),
        limit_text(hard)
    )?;
    writeln!(
        out,
        "  (a replica also locks all its memory with mlockall; below that it runs unlocked and \
         says so)"
    )?;
    match (fit, finding) {
        (MemlockFit::TooSmall, Some(f)) => findings.blockers.push(f),
        (_, Some(f)) => findings.advice.push(f),
        (_, None) => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Cores

fn write_cores(out: &mut impl Write, findings: &mut Findings) -> io::Result<()> {
    writeln!(out, "\ncores")?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let isolated = IsolatedCores::detect();
    writeln!(out, "  {cpus} CPUs available to this process")?;
    writeln!(out, "  {}", isolated.describe())?;
    if isolated.isolated.is_empty() && isolated.nohz_full.is_empty() {
        findings.advice.push(
            "no isolated cores: `polling = \"busy\"` spins two cores per replica and wants them \
             free of other work (boot with isolcpus= and nohz_full=); without them use \
             `polling = \"shared\"`"
                .into(),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Huge pages

/// The huge-page pool from `/proc/meminfo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HugePages {
    total: u64,
    free: u64,
    /// `Hugepagesize`, in KiB.
    size_kib: u64,
}

/// The huge-page fields of `/proc/meminfo`; None when any is missing.
fn parse_meminfo(text: &str) -> Option<HugePages> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.split_whitespace().next()?.parse().ok())?
        })
    };
    Some(HugePages {
        total: field("HugePages_Total")?,
        free: field("HugePages_Free")?,
        size_kib: field("Hugepagesize")?,
    })
}

fn write_huge_pages(out: &mut impl Write, findings: &mut Findings) -> io::Result<()> {
    writeln!(out, "\nhuge pages")?;
    let Some(pages) = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_meminfo(&text))
    else {
        return writeln!(out, "  unknown (no huge-page fields in /proc/meminfo)");
    };
    writeln!(
        out,
        "  {} reserved, {} free, {} each",
        pages.total,
        pages.free,
        size(pages.size_kib * 1024)
    )?;
    if pages.total == 0 {
        findings.advice.push(
            "no huge pages reserved (vm.nr_hugepages = 0): optional; large registrations in \
             huge pages need fewer NIC translation entries, though mu maps its regions in \
             ordinary pages today"
                .into(),
        );
    }
    Ok(())
}

fn write_shared_memory_barrier(out: &mut impl Write, findings: &mut Findings) -> io::Result<()> {
    writeln!(out, "\nshared-memory fabric")?;
    if crate::barrier::issues() {
        return writeln!(
            out,
            "  membarrier(2) global expedited barrier: works; writers set their in-flight markers \
             without a fence"
        );
    }
    findings.advice.push(
        "membarrier(2)'s global expedited barrier is refused (a kernel before 4.16, or a seccomp \
         filter): the shared-memory fabric works, but each write fences its in-flight marker, \
         which costs a 64 B commit up to twice the time"
            .into(),
    );
    writeln!(
        out,
        "  membarrier(2) global expedited barrier: refused; each write fences its in-flight marker"
    )
}

// ---------------------------------------------------------------------------------------------
// Kernel support

/// The kernel's RDMA support, as sysfs and /dev show it.
#[derive(Clone, Debug, Default)]
struct KernelSupport {
    /// `/sys/class/infiniband` exists: the kernel knows RDMA devices.
    sysfs_class: bool,
    /// The `/dev/infiniband/uverbs*` nodes user space opens devices through.
    uverbs: Vec<String>,
    /// [`MODULES`] and whether each is loaded (or built in).
    modules: Vec<(&'static str, bool)>,
}

impl KernelSupport {
    fn detect() -> KernelSupport {
        let mut uverbs: Vec<String> = fs::read_dir(DEV_DIR)
            .map(|dir| {
                dir.filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                    .filter(|name| name.starts_with("uverbs"))
                    .collect()
            })
            .unwrap_or_default();
        uverbs.sort();
        KernelSupport {
            sysfs_class: Path::new(SYSFS_CLASS).is_dir(),
            uverbs,
            modules: MODULES
                .iter()
                .map(|&m| (m, Path::new("/sys/module").join(m).exists()))
                .collect(),
        }
    }
}

fn write_kernel(out: &mut impl Write, kernel: &KernelSupport) -> io::Result<()> {
    writeln!(out, "\nkernel support")?;
    let present = |yes: bool| if yes { "present" } else { "missing" };
    writeln!(out, "  {SYSFS_CLASS}: {}", present(kernel.sysfs_class))?;
    let nodes = if kernel.uverbs.is_empty() {
        "none".into()
    } else {
        kernel.uverbs.join(", ")
    };
    writeln!(out, "  {DEV_DIR}/uverbs*: {nodes}")?;
    for (module, loaded) in &kernel.modules {
        let state = if *loaded { "loaded" } else { "not loaded" };
        writeln!(out, "  module {module}: {state}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u8, gid: [u8; 16], kind: Option<&str>) -> GidEntry {
        GidEntry {
            index,
            gid,
            kind: kind.map(str::to_owned),
            ndev: Some("eth0".into()),
        }
    }

    fn mapped(a: u8, b: u8, c: u8, d: u8) -> [u8; 16] {
        std::net::Ipv4Addr::new(a, b, c, d)
            .to_ipv6_mapped()
            .octets()
    }

    fn link_local() -> [u8; 16] {
        "fe80::5054:ff:fe12:3456"
            .parse::<Ipv6Addr>()
            .unwrap()
            .octets()
    }

    fn device_attr() -> DeviceAttr {
        DeviceAttr {
            firmware: "1.0".into(),
            ports: 1,
            max_qp: 1024,
            max_qp_wr: 16384,
            max_cqe: 32767,
            max_mr: 1024,
            max_mr_size: u64::MAX,
            max_qp_rd_atom: 16,
            max_qp_init_rd_atom: 16,
        }
    }

    fn roce_port(state: u32, gids: Vec<GidEntry>) -> PortProbe {
        PortProbe {
            number: 1,
            attr: Ok(PortAttr {
                state,
                active_mtu: ibv_mtu::IBV_MTU_1024,
                lid: 0,
                gid_table_len: 16,
                link_layer: ibv::LINK_LAYER_ETHERNET,
            }),
            gids,
        }
    }

    fn rxe(port: PortProbe) -> DeviceProbe {
        DeviceProbe {
            name: "rxe0".into(),
            attr: Ok(device_attr()),
            ports: vec![port],
            queue_pair: Ok(256),
        }
    }

    fn needs() -> ReplicaNeeds {
        ReplicaNeeds::of(&crate::demo::cluster_config(3, 64, Polling::Shared, None))
    }

    #[test]
    fn gids_print_as_ipv6_and_ipv4_when_mapped() {
        assert_eq!(format_gid(&link_local()), "fe80::5054:ff:fe12:3456");
        assert_eq!(
            format_gid(&mapped(10, 0, 2, 15)),
            "::ffff:10.0.2.15 (IPv4 10.0.2.15)"
        );
        let mut global = [0u8; 16];
        global[..2].copy_from_slice(&[0x20, 0x01]);
        global[15] = 1;
        assert_eq!(format_gid(&global), "2001::1");
    }

    #[test]
    fn mtu_enum_to_bytes() {
        let all: Vec<_> = (0..=6).map(mtu_bytes).collect();
        assert_eq!(
            all,
            [
                None,
                Some(256),
                Some(512),
                Some(1024),
                Some(2048),
                Some(4096),
                None
            ]
        );
    }

    #[test]
    fn port_states_in_words() {
        let names: Vec<_> = (1..=4).map(port_state_name).collect();
        assert_eq!(names, ["DOWN", "INIT", "ARMED", "ACTIVE"]);
        assert_eq!(port_state_name(9), "state 9");
    }

    #[test]
    fn meminfo_huge_pages() {
        let text = "MemTotal:       16384 kB\nHugePages_Total:      64\nHugePages_Free:       \
                    60\nHugePages_Rsvd:        0\nHugepagesize:       2048 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some(HugePages {
                total: 64,
                free: 60,
                size_kib: 2048
            })
        );
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn status_gives_effective_uid_and_ipc_lock() {
        let root = "Uid:\t1000\t0\t0\t0\nCapEff:\t000001fffeffffff\n";
        assert_eq!(
            parse_status(root),
            Identity {
                uid: Some(0),
                ipc_lock: Some(true)
            }
        );
        let user = "Uid:\t1000\t1000\t1000\t1000\nCapEff:\t0000000000000000\n";
        assert_eq!(parse_status(user).ipc_lock, Some(false));
    }

    #[test]
    fn sizes_and_pinned_pages() {
        assert_eq!(size(512), "512 bytes");
        assert_eq!(size(8 << 20), "8.0 MiB");
        assert_eq!(size(u64::MAX), "16.0 EiB");
        assert_eq!(pinned(0, 1, 4096), 4096);
        assert_eq!(pinned(4095, 4097, 4096), 8192);
        assert_eq!(pinned(5, 5, 4096), 0);
    }

    #[test]
    fn memlock_enough_when_unlimited_or_large_lifted_by_ipc_lock() {
        let needs = needs();
        let no_cap = Identity {
            uid: Some(1000),
            ipc_lock: Some(false),
        };
        let cap = Identity {
            uid: Some(0),
            ipc_lock: Some(true),
        };
        let fit = |soft, identity| memlock_fit(soft, identity, &needs);
        assert_eq!(fit(64 << 10, no_cap), MemlockFit::TooSmall);
        assert_eq!(fit(RLIM_INFINITY, no_cap), MemlockFit::Enough);
        assert_eq!(fit(needs.memlock_bytes(), no_cap), MemlockFit::Enough);
        assert_eq!(fit(64 << 10, cap), MemlockFit::LiftedByCapability);
        let (_, blocker) = memlock_judgement(MemlockFit::TooSmall, 64 << 10, &needs);
        assert!(blocker.unwrap().contains("ulimit -l unlimited"));
        assert_eq!(
            memlock_judgement(MemlockFit::Enough, RLIM_INFINITY, &needs).1,
            None
        );
    }

    #[test]
    fn roce_v2_ipv4_gid_is_chosen() {
        let gids = vec![
            entry(0, link_local(), Some("IB/RoCE v1")),
            entry(1, link_local(), Some("RoCE v2")),
            entry(2, mapped(10, 0, 2, 15), Some("IB/RoCE v1")),
            entry(3, mapped(10, 0, 2, 15), Some("RoCE v2")),
        ];
        let device = rxe(roce_port(ibv_port_state::IBV_PORT_ACTIVE, gids));
        assert!(device_problems(&device, &needs()).is_empty());
        let choice = usable_port(&device).unwrap();
        assert_eq!((choice.port, choice.gid_index), (1, 3));
        let mut out = Vec::new();
        write_device(&mut out, &device).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("gid_index to use: 3 (RoCE v2 with an IPv4 address)"),
            "{text}"
        );
        assert!(text.contains("Ethernet (RoCE), MTU 1024 bytes"), "{text}");
    }

    #[test]
    fn a_down_port_or_an_empty_gid_table_blocks() {
        let gids = vec![entry(1, mapped(10, 0, 2, 15), Some("RoCE v2"))];
        let down = rxe(roce_port(ibv_port_state::IBV_PORT_DOWN, gids));
        let problems = device_problems(&down, &needs());
        assert!(
            problems[0].contains("no port is ACTIVE (port 1 DOWN)"),
            "{problems:?}"
        );
        let empty = rxe(roce_port(ibv_port_state::IBV_PORT_ACTIVE, Vec::new()));
        let problems = device_problems(&empty, &needs());
        assert!(problems[0].contains("no usable GID"), "{problems:?}");
    }

    #[test]
    fn small_device_limits_block() {
        let mut attr = device_attr();
        attr.max_qp_wr = 16;
        attr.max_mr_size = 4096;
        let short = shortfalls(&attr, &needs());
        assert_eq!(short.len(), 2, "{short:?}");
        assert!(short[0].starts_with("work requests per queue pair"));
    }

    #[test]
    fn a_ready_device_gives_the_configuration_keys() {
        let gids = vec![entry(1, mapped(10, 0, 2, 15), Some("RoCE v2"))];
        let devices = Ok(vec![rxe(roce_port(ibv_port_state::IBV_PORT_ACTIVE, gids))]);
        let mut findings = Findings::default();
        judge_devices(&devices, &KernelSupport::default(), &needs(), &mut findings);
        let mut out = Vec::new();
        assert!(write_verdict(&mut out, &findings).unwrap());
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("device = \"rxe0\", port = 1, gid_index = 1"),
            "{text}"
        );
        assert!(text.contains("--gid-index 1 --ip 10.0.2.15"), "{text}");
    }

    #[test]
    fn a_failed_listing_blocks_with_the_soft_roce_advice() {
        let kernel = KernelSupport {
            sysfs_class: true,
            ..KernelSupport::default()
        };
        let mut findings = Findings::default();
        judge_devices(&Err("boom".into()), &kernel, &needs(), &mut findings);
        let blocker = &findings.blockers[0];
        assert!(
            blocker.contains("listing RDMA devices failed (boom)"),
            "{blocker}"
        );
        assert!(blocker.contains("modprobe ib_uverbs"), "{blocker}");
        assert!(!write_verdict(&mut Vec::new(), &findings).unwrap());
    }

    #[test]
    fn no_device_is_not_ready_and_says_so() {
        let mut out = Vec::new();
        let ready = doctor(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        println!("{text}");
        if Path::new(SYSFS_CLASS).exists() {
            return; // A host with RDMA devices: the report is about them.
        }
        assert!(!ready);
        assert!(text.contains("no RDMA device"), "{text}");
        assert!(
            text.contains("rdma link add rxe0 type rxe netdev"),
            "{text}"
        );
    }
}
