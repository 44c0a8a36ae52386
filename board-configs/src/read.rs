//! Reading and validating a deployment file: walks the spanned tree so that every error can name
//! the line of the key or value at fault.

use crate::tree::{self, Entry, Kind, Node};
use crate::{
    Cluster, ConfigFileError, Deployment, FabricSpec, FirmwareHost, Host, LinuxHost, Polling,
    ReplicaSpec,
};
use mu_nostd::{Config, DetectorConfig};
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::PathBuf;
use window_layout::{ring, WindowLayout, REGION_ALIGN_BYTES};

type Result<T> = std::result::Result<T, ConfigFileError>;

/// CPUs a Linux `cpu_set_t` can name.
const CPUS_MAX: i64 = 1023;

/// The source being read, to turn byte offsets into lines.
pub(crate) struct Reader<'a> {
    source: &'a str,
    file: &'a str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(source: &'a str, file: &'a str) -> Reader<'a> {
        Reader { source, file }
    }

    /// An error at byte offset `at` of the source.
    pub(crate) fn error(&self, at: usize, field: &str, reason: &str) -> ConfigFileError {
        let before = &self.source.as_bytes()[..at.min(self.source.len())];
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        // Columns count characters: skip UTF-8 continuation bytes.
        let column = before[line_start..]
            .iter()
            .filter(|&&b| b & 0xC0 != 0x80)
            .count();
        ConfigFileError {
            file: self.file.to_owned(),
            line: Some(before.iter().filter(|&&b| b == b'\n').count() + 1),
            column: Some(column + 1),
            field: field.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

fn start(span: &Option<Range<usize>>) -> Option<usize> {
    span.as_ref().map(|s| s.start)
}

/// A table of the file, with its dotted path and where it starts (its header, or the key that
/// made it when it has none of its own).
struct Table<'a> {
    r: &'a Reader<'a>,
    path: String,
    at: usize,
    entries: &'a [Entry],
}

impl<'a> Table<'a> {
    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn fail(&self, key: &str, at: usize, reason: &str) -> ConfigFileError {
        self.r.error(at, &self.field(key), reason)
    }

    fn entry(&self, key: &str) -> Option<&'a Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// Where the value of `e` starts.
    fn value_at(&self, e: &Entry) -> usize {
        start(&e.value.span)
            .or(start(&e.key_span))
            .unwrap_or(self.at)
    }

    /// Where `key`'s value is, or this table's header when it is absent.
    fn at(&self, key: &str) -> usize {
        self.entry(key).map_or(self.at, |e| self.value_at(e))
    }

    /// An error for a required key that is absent, at this table's header.
    fn missing(&self, key: &str, reason: &str) -> ConfigFileError {
        self.fail(key, self.at, reason)
    }

    /// Rejects keys the schema does not know, at the line of the first such key.
    fn allow(&self, known: &[&str]) -> Result<()> {
        match self
            .entries
            .iter()
            .find(|e| !known.contains(&e.key.as_str()))
        {
            None => Ok(()),
            Some(e) => Err(self.fail(
                &e.key,
                start(&e.key_span).unwrap_or_else(|| self.value_at(e)),
                &format!("unknown key; expected one of: {}", known.join(", ")),
            )),
        }
    }

    fn int<T: TryFrom<i64>>(&self, key: &str, range: RangeInclusive<i64>) -> Result<Option<T>> {
        let Some(e) = self.entry(key) else {
            return Ok(None);
        };
        let expected = if *range.end() == i64::MAX {
            format!("must be an integer >= {}", range.start())
        } else {
            format!("must be an integer in {}..={}", range.start(), range.end())
        };
        let reason = match &e.value.kind {
            Kind::Int(v) if range.contains(v) => match T::try_from(*v) {
                Ok(v) => return Ok(Some(v)),
                Err(_) => format!("{expected} (found {v})"),
            },
            Kind::Int(v) => format!("{expected} (found {v})"),
            other => format!("{expected} (found {})", other.describe()),
        };
        Err(self.fail(key, self.value_at(e), &reason))
    }

    fn need_int<T: TryFrom<i64>>(&self, key: &str, range: RangeInclusive<i64>) -> Result<T> {
        self.int(key, range)?
            .ok_or_else(|| self.missing(key, "required key is missing"))
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.entry(key) {
            None => Ok(None),
            Some(Entry {
                value: Node {
                    kind: Kind::Str(s), ..
                },
                ..
            }) => Ok(Some(s)),
            Some(e) => Err(self.fail(
                key,
                self.value_at(e),
                &format!("must be a string (found {})", e.value.kind.describe()),
            )),
        }
    }

    /// A required, non-empty string.
    fn need_str(&self, key: &str) -> Result<&'a str> {
        match self.str(key)? {
            None => Err(self.missing(key, "required key is missing")),
            Some("") => Err(self.fail(key, self.at(key), "must not be empty")),
            Some(s) => Ok(s),
        }
    }

    /// A string that must be one of `choices`.
    fn choice(&self, key: &str, choices: &[&str]) -> Result<Option<&'a str>> {
        match self.str(key)? {
            Some(s) if !choices.contains(&s) => {
                let quoted: Vec<String> = choices.iter().map(|c| format!("\"{c}\"")).collect();
                Err(self.fail(
                    key,
                    self.at(key),
                    &format!("must be {} (found \"{s}\")", quoted.join(" or ")),
                ))
            }
            found => Ok(found),
        }
    }

    fn table(&self, key: &str) -> Result<Option<Table<'a>>> {
        let Some(e) = self.entry(key) else {
            return Ok(None);
        };
        match &e.value.kind {
            Kind::Table(entries) => Ok(Some(Table {
                r: self.r,
                path: self.field(key),
                at: start(&e.value.span)
                    .or(start(&e.key_span))
                    .unwrap_or(self.at),
                entries,
            })),
            other => Err(self.fail(
                key,
                self.value_at(e),
                &format!("must be a table (found {})", other.describe()),
            )),
        }
    }
}

pub(crate) fn deployment(source: &str, file: &str) -> Result<Deployment> {
    parsed(source, file).map(|p| p.deployment)
}

/// A deployment together with the spanned tree it was read from, so that checks made after
/// parsing (a firmware board's rules) can still point at the line of the field they reject.
pub(crate) struct Parsed<'a> {
    pub deployment: Deployment,
    r: Reader<'a>,
    root: Node,
}

pub(crate) fn parsed<'a>(source: &'a str, file: &'a str) -> Result<Parsed<'a>> {
    let r = Reader::new(source, file);
    let root = syntax(&r)?;
    let Kind::Table(entries) = &root.kind else {
        return Err(r.error(0, "", "a deployment file must be a TOML table"));
    };
    let table = Table {
        r: &r,
        path: String::new(),
        at: 0,
        entries,
    };
    let deployment = schema(&table)?;
    Ok(Parsed {
        deployment,
        r,
        root,
    })
}

/// The spanned tree of the source, or its first TOML syntax error.
fn syntax(r: &Reader<'_>) -> Result<Node> {
    tree::parse(r.source).map_err(|e| {
        // Every parse error we have seen has a span; the start of the file is a safe fallback.
        let at = e.span().map_or(0, |s| s.start);
        // The message may run over several lines ("invalid table header", "duplicate key");
        // an error stays on one line.
        let lines: Vec<&str> = e.message().lines().filter(|l| !l.is_empty()).collect();
        if !lines.is_empty() {
            return r.error(at, "", &lines.join(": "));
        }
        // toml_edit gives no message for a truncated value or a stray control character.
        match r.source.get(at..).and_then(|rest| rest.chars().next()) {
            None => r.error(at, "", "unexpected end of file"),
            Some(c) => r.error(at, "", &format!("unexpected character {c:?}")),
        }
    })
}

/// The deployment the root table describes.
fn schema(root: &Table<'_>) -> Result<Deployment> {
    root.allow(&["cluster", "replica"])?;
    let cluster_table = root
        .table("cluster")?
        .ok_or_else(|| root.missing("cluster", "the [cluster] section is missing"))?;
    let cluster = cluster(&cluster_table)?;
    let replicas = replicas(root, &cluster_table, &cluster)?;
    Ok(Deployment {
        file: root.r.file.to_owned(),
        cluster,
        replicas,
    })
}

impl Parsed<'_> {
    /// An error about `field`, a dotted path as errors spell it (`cluster.tick_ns`,
    /// `replica[1].firmware.board`), at the line the parser would have named: the field's
    /// value, or the nearest enclosing table the file spells out when the field is absent.
    pub fn error(&self, field: &str, reason: &str) -> ConfigFileError {
        let (mut node, mut at) = (&self.root, 0);
        for part in field.split('.') {
            let (key, index) = match part.split_once('[') {
                Some((key, rest)) => (key, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            let Kind::Table(entries) = &node.kind else {
                break;
            };
            let Some(e) = entries.iter().find(|e| e.key == key) else {
                break;
            };
            // As `Table::value_at` and `Table::table` do.
            at = start(&e.value.span).or(start(&e.key_span)).unwrap_or(at);
            node = &e.value;
            if let (Some(i), Kind::Array(items)) = (index, &node.kind) {
                let Some(item) = items.get(i) else { break };
                at = start(&item.span).unwrap_or(at);
                node = item;
            }
        }
        self.r.error(at, field, reason)
    }

    /// The place in the file of the replica with id `id`, as errors name it: `replica[i]`.
    pub fn replica_index(&self, id: u8) -> usize {
        let Kind::Table(entries) = &self.root.kind else {
            unreachable!("`parsed` checked that the root is a table")
        };
        entries
            .iter()
            .find(|e| e.key == "replica")
            .and_then(|e| match &e.value.kind {
                Kind::Array(items) => items.iter().position(|item| has_id(item, id)),
                _ => None,
            })
            // A parsed deployment has every id once; the id is a harmless fallback.
            .unwrap_or(usize::from(id))
    }
}

fn has_id(item: &Node, id: u8) -> bool {
    let Kind::Table(entries) = &item.kind else {
        return false;
    };
    entries
        .iter()
        .any(|e| e.key == "id" && matches!(e.value.kind, Kind::Int(v) if v == i64::from(id)))
}

fn cluster(t: &Table<'_>) -> Result<Cluster> {
    t.allow(&[
        "name",
        "replicas",
        "tick_ns",
        "slot_count",
        "slot_size",
        "entry_slots_max",
        "pipeline_depth",
        "op_timeout_ticks",
        "permission_retry_ticks",
        "recycle_period_ticks",
        "transfer_chunk_bytes",
        "transfer_window",
        "detector",
    ])?;
    let name = t.need_str("name")?;
    let name_ok = name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(t.fail(
            "name",
            t.at("name"),
            "must be 1 to 32 characters of A-Z, a-z, 0-9, '_' and '-'",
        ));
    }
    let u32s = 0..=i64::from(u32::MAX);
    let u16s = 0..=i64::from(u16::MAX);
    let replica_count = t.need_int("replicas", 1..=i64::from(mu_nostd::config::REPLICAS_MAX))?;
    let tick_ns = t.need_int("tick_ns", 1..=1_000_000_000)?;
    let slot_count = t.need_int("slot_count", u32s.clone())?;
    let slot_size = t.need_int("slot_size", u32s.clone())?;
    let entry_slots_max = t.need_int("entry_slots_max", u16s.clone())?;
    let pipeline_depth = t.need_int("pipeline_depth", u16s)?;
    let op_timeout_ticks = t.need_int("op_timeout_ticks", u32s.clone())?;
    let permission_retry_ticks = t.need_int("permission_retry_ticks", u32s.clone())?;
    let recycle_period_ticks = t.need_int("recycle_period_ticks", u32s.clone())?;
    let defaults = Config::new(replica_count);
    let transfer_chunk_bytes = t
        .int("transfer_chunk_bytes", u32s)?
        .unwrap_or(defaults.transfer_chunk_bytes);
    let transfer_window = t
        .int("transfer_window", 0..=i64::from(u8::MAX))?
        .unwrap_or(defaults.transfer_window);
    let detector_table = t.table("detector")?.ok_or_else(|| {
        t.missing(
            "detector",
            "the [cluster.detector] section is missing (it needs read_period_ticks)",
        )
    })?;
    let config = Config {
        replica_count,
        slot_count,
        slot_size,
        entry_slots_max,
        pipeline_depth,
        op_timeout_ticks,
        permission_retry_ticks,
        recycle_period_ticks,
        transfer_chunk_bytes,
        transfer_window,
        detector: detector(&detector_table)?,
    };
    config.validate().map_err(|e| {
        // The core names its fields as `Config` does; point at the key that set the value.
        let (table, key) = match e.field.strip_prefix("detector.") {
            Some(key) => (&detector_table, key),
            None if e.field == "replica_count" => (t, "replicas"),
            None => (t, e.field),
        };
        let at = match table.entry(key) {
            Some(entry) => table.value_at(entry),
            // An absent detector key got its default from read_period_ticks.
            None => table.at("read_period_ticks"),
        };
        table.fail(key, at, e.reason)
    })?;
    Ok(Cluster {
        name: name.to_owned(),
        tick_ns,
        config,
    })
}

fn detector(t: &Table<'_>) -> Result<DetectorConfig> {
    t.allow(&[
        "read_period_ticks",
        "heartbeat_period_ticks",
        "read_timeout_ticks",
        "score_max",
        "fail_below",
        "recover_above",
        "fate_ticks",
    ])?;
    let u32s = 0..=i64::from(u32::MAX);
    let u8s = 0..=i64::from(u8::MAX);
    let paper = DetectorConfig::paper(t.need_int("read_period_ticks", u32s.clone())?);
    Ok(DetectorConfig {
        heartbeat_period_ticks: t
            .int("heartbeat_period_ticks", u32s.clone())?
            .unwrap_or(paper.heartbeat_period_ticks),
        read_timeout_ticks: t
            .int("read_timeout_ticks", u32s.clone())?
            .unwrap_or(paper.read_timeout_ticks),
        score_max: t.int("score_max", u8s.clone())?.unwrap_or(paper.score_max),
        fail_below: t
            .int("fail_below", u8s.clone())?
            .unwrap_or(paper.fail_below),
        recover_above: t.int("recover_above", u8s)?.unwrap_or(paper.recover_above),
        fate_ticks: t.int("fate_ticks", u32s)?.unwrap_or(paper.fate_ticks),
        ..paper
    })
}

fn replicas(
    root: &Table<'_>,
    cluster_table: &Table<'_>,
    cluster: &Cluster,
) -> Result<Vec<ReplicaSpec>> {
    let n = cluster.config.replica_count;
    let items: &[Node] = match root.entry("replica") {
        None => &[],
        Some(Entry {
            value: Node {
                kind: Kind::Array(items),
                ..
            },
            ..
        }) => items,
        Some(e) => {
            return Err(root.fail(
                "replica",
                root.value_at(e),
                &format!(
                    "must be an array of tables ([[replica]]), found {}",
                    e.value.kind.describe()
                ),
            ))
        }
    };
    let array_at = root.at("replica");
    let mut replicas: Vec<ReplicaSpec> = Vec::new();
    // Where each id was first seen, to name the other replica in a duplicate's error.
    let mut seen: Vec<Option<usize>> = vec![None; n as usize];
    let mut linux_seen = LinuxSeen::default();
    for (i, item) in items.iter().enumerate() {
        let path = format!("replica[{i}]");
        let at = start(&item.span).unwrap_or(array_at);
        let Kind::Table(entries) = &item.kind else {
            return Err(root.r.error(
                at,
                &path,
                &format!("must be a table (found {})", item.kind.describe()),
            ));
        };
        let t = Table {
            r: root.r,
            path,
            at,
            entries,
        };
        t.allow(&["id", "linux", "firmware"])?;
        let id: u8 = t.need_int("id", 0..=i64::from(n) - 1)?;
        if let Some(first) = seen[id as usize] {
            return Err(t.fail(
                "id",
                t.at("id"),
                &format!("duplicate replica id {id} (also replica[{first}])"),
            ));
        }
        seen[id as usize] = Some(i);
        let host = match (t.table("linux")?, t.table("firmware")?) {
            (Some(linux), None) => {
                let host = linux_host(&linux, cluster)?;
                linux_seen.check(&linux, i, &host)?;
                Host::Linux(host)
            }
            (None, Some(firmware)) => Host::Firmware(firmware_host(&firmware, cluster)?),
            (Some(_), Some(firmware)) => {
                return Err(t.fail(
                    "firmware",
                    firmware.at,
                    "a replica has [replica.linux] or [replica.firmware], not both",
                ))
            }
            (None, None) => {
                return Err(t.r.error(
                    t.at,
                    &t.path,
                    "needs a [replica.linux] or a [replica.firmware] section",
                ))
            }
        };
        replicas.push(ReplicaSpec { id, host });
    }
    if let Some(id) = seen.iter().position(Option::is_none) {
        return Err(root.r.error(
            cluster_table.at("replicas"),
            "replica",
            &format!("no [[replica]] has id {id}, and cluster.replicas = {n} needs ids 0..{n}"),
        ));
    }
    replicas.sort_by_key(|r| r.id);
    Ok(replicas)
}

/// What the Linux replicas read so far use, to refuse a cluster that mixes fabrics (shared
/// memory and RDMA replicas cannot reach each other), gives two TCP listeners one address, or
/// gives some Linux replicas a `serve` address and others none.
#[derive(Default)]
struct LinuxSeen {
    /// The first Linux replica's entry index and whether it uses verbs.
    first: Option<(usize, bool)>,
    /// The first Linux replica's entry index and whether it has a `serve` address.
    first_serve: Option<(usize, bool)>,
    /// Every TCP address a replica listens on (verbs `address`, `serve`), with the entry index
    /// and the key that gave it.
    addresses: Vec<(SocketAddr, usize, &'static str)>,
}

impl LinuxSeen {
    fn check(&mut self, t: &Table<'_>, entry: usize, host: &LinuxHost) -> Result<()> {
        let verbs = matches!(host.fabric, FabricSpec::Verbs { .. });
        match self.first {
            None => self.first = Some((entry, verbs)),
            Some((first, kind)) if kind != verbs => {
                return Err(t.fail(
                    "fabric",
                    t.at("fabric"),
                    &format!(
                        "replica[{first}] uses the other fabric; all Linux replicas of a \
                         cluster use the same one"
                    ),
                ))
            }
            Some(_) => {}
        }
        let serves = host.serve.is_some();
        match self.first_serve {
            None => self.first_serve = Some((entry, serves)),
            Some((first, true)) if !serves => {
                return Err(t.missing(
                    "serve",
                    &format!(
                        "required: replica[{first}] has a serve address, and a follower \
                         forwards to the leader's, so every Linux replica has one or none does"
                    ),
                ))
            }
            Some((first, false)) if serves => {
                return Err(t.fail(
                    "serve",
                    t.at("serve"),
                    &format!(
                        "replica[{first}] has no serve address, and a follower forwards to the \
                         leader's, so every Linux replica has one or none does"
                    ),
                ))
            }
            Some(_) => {}
        }
        if let FabricSpec::Verbs { address, .. } = &host.fabric {
            // Checked by `linux_host`.
            if let Ok(address) = address.parse::<SocketAddr>() {
                self.listens(t, entry, "address", address)?;
            }
        }
        if let Some(address) = host.serve {
            self.listens(t, entry, "serve", address)?;
        }
        Ok(())
    }

    /// Records that replica entry `entry` listens on `address` (its `key`), which no listener
    /// read before may use.
    fn listens(
        &mut self,
        t: &Table<'_>,
        entry: usize,
        key: &'static str,
        address: SocketAddr,
    ) -> Result<()> {
        if let Some(&(_, first, first_key)) = self.addresses.iter().find(|(a, ..)| *a == address) {
            let other = if first == entry {
                format!("this replica's {first_key}")
            } else {
                format!("replica[{first}].linux.{first_key}")
            };
            return Err(t.fail(
                key,
                t.at(key),
                &format!("the same address as {other}; every listener needs its own"),
            ));
        }
        self.addresses.push((address, entry, key));
        Ok(())
    }
}

const VERBS_KEYS: [&str; 4] = ["device", "port", "gid_index", "address"];

/// The directory of the replica's local shared-memory files: every region for `shm`; the lock,
/// the registered region and the client port for `verbs`.
fn shm_dir(t: &Table<'_>, cluster: &Cluster) -> Result<PathBuf> {
    match t.str("shm_dir")? {
        None => Ok(PathBuf::from(format!("/dev/shm/mu-{}", cluster.name))),
        // Shared memory is Linux-only, so "absolute" means what it means there.
        Some(dir) if dir.starts_with('/') => Ok(PathBuf::from(dir)),
        Some(_) => Err(t.fail("shm_dir", t.at("shm_dir"), "must be an absolute path")),
    }
}

fn linux_host(t: &Table<'_>, cluster: &Cluster) -> Result<LinuxHost> {
    t.allow(&[
        "fabric",
        "shm_dir",
        "replication_core",
        "background_core",
        "polling",
        "realtime_priority",
        "device",
        "port",
        "gid_index",
        "address",
        "serve",
    ])?;
    let fabric = match t.choice("fabric", &["shm", "verbs"])? {
        None => return Err(t.missing("fabric", "required key is missing")),
        Some("shm") => {
            if let Some(key) = VERBS_KEYS.iter().find(|k| t.entry(k).is_some()) {
                return Err(t.fail(key, t.at(key), "only for fabric = \"verbs\""));
            }
            FabricSpec::Shm {
                dir: shm_dir(t, cluster)?,
            }
        }
        Some(_) => {
            let need = "required with fabric = \"verbs\"";
            if let Some(key) = VERBS_KEYS.iter().find(|k| t.entry(k).is_none()) {
                return Err(t.missing(key, need));
            }
            let (device, port, gid_index) = (
                t.need_str("device")?,
                t.need_int("port", 1..=255)?,
                t.need_int("gid_index", 0..=255)?,
            );
            let address = t.need_str("address")?;
            if address.parse::<std::net::SocketAddr>().is_err() {
                return Err(t.fail(
                    "address",
                    t.at("address"),
                    "must be IP:port, e.g. \"10.0.2.15:7470\"",
                ));
            }
            FabricSpec::Verbs {
                dir: shm_dir(t, cluster)?,
                device: device.to_owned(),
                port,
                gid_index,
                address: address.to_owned(),
            }
        }
    };
    let replication_core = t.int("replication_core", 0..=CPUS_MAX)?;
    let background_core = t.int("background_core", 0..=CPUS_MAX)?;
    let polling = match t.choice("polling", &["busy", "shared"])? {
        Some("busy") => Polling::Busy,
        _ => Polling::Shared,
    };
    if polling == Polling::Busy && replication_core.is_some() && replication_core == background_core
    {
        return Err(t.fail(
            "background_core",
            t.at("background_core"),
            "busy polling needs two distinct cores: the two planes never yield",
        ));
    }
    let realtime_priority = t.int("realtime_priority", 0..=99)?.filter(|&p: &u8| p != 0);
    Ok(LinuxHost {
        fabric,
        replication_core,
        background_core,
        polling,
        realtime_priority,
        serve: serve(t)?,
    })
}

/// The front end's address: one the replica can listen on and its peers can connect to.
fn serve(t: &Table<'_>) -> Result<Option<SocketAddr>> {
    let Some(text) = t.str("serve")? else {
        return Ok(None);
    };
    let fail = |reason: &str| Err(t.fail("serve", t.at("serve"), reason));
    let Ok(address) = text.parse::<SocketAddr>() else {
        return fail("must be IP:port, e.g. \"10.0.0.5:7379\" or \"[::1]:7379\"");
    };
    if address.port() == 0 {
        return fail("port 0 would let the kernel pick a port the other replicas cannot know");
    }
    if address.ip().is_unspecified() {
        return fail(
            "an unspecified IP can be listened on but not connected to, and the other \
             replicas forward to this address: give this host's IP",
        );
    }
    Ok(Some(address))
}

fn firmware_host(t: &Table<'_>, cluster: &Cluster) -> Result<FirmwareHost> {
    t.allow(&[
        "board",
        "ram_base",
        "ram_size",
        "window_base",
        "window_size",
    ])?;
    let host = FirmwareHost {
        board: t.need_str("board")?.to_owned(),
        ram_base: t.need_int("ram_base", 0..=i64::MAX)?,
        ram_size: t.need_int("ram_size", 1..=i64::MAX)?,
        window_base: t.need_int("window_base", 0..=i64::MAX)?,
        window_size: t.need_int("window_size", 1..=i64::MAX)?,
    };
    let end = |base: u64, size: u64, key: &str| {
        base.checked_add(size)
            .ok_or_else(|| t.fail(key, t.at(key), "base + size overflows u64"))
    };
    let ram_end = end(host.ram_base, host.ram_size, "ram_size")?;
    let window_end = end(host.window_base, host.window_size, "window_size")?;
    if host.ram_base < window_end && host.window_base < ram_end {
        return Err(t.fail(
            "window_base",
            t.at("window_base"),
            &format!(
                "the window {:#x}..{window_end:#x} overlaps RAM {:#x}..{ram_end:#x}",
                host.window_base, host.ram_base
            ),
        ));
    }
    window_holds_the_cluster(t, cluster, host.window_size)?;
    Ok(host)
}

/// The window must hold everything the firmware puts in it (`window_layout`): the
/// header (control block and telemetry), every replica's region and the work-request rings.
fn window_holds_the_cluster(t: &Table<'_>, cluster: &Cluster, window_size: u64) -> Result<()> {
    let fail = |reason: String| t.fail("window_size", t.at("window_size"), &reason);
    // The configuration is valid here, so the only error left is a window beyond u32 offsets.
    let layout = WindowLayout::new(&cluster.config).map_err(|e| {
        fail(format!(
            "the cluster cannot be laid out in a firmware window ({e}); reduce \
             cluster.slot_count or cluster.slot_size"
        ))
    })?;
    if layout.bytes > window_size {
        // The rings run from `rings` to the end of the window.
        let rings = (layout.bytes - u64::from(layout.rings)) / u64::from(ring::RING_BYTES);
        let kib = REGION_ALIGN_BYTES / 1024;
        return Err(fail(format!(
            "too small: {} regions of {} bytes (each rounded up to {kib} KiB), {rings} rings of \
             {} bytes and the {kib} KiB header need {} ({:#x}) bytes (found {window_size:#x})",
            layout.replica_count,
            layout.region_stride,
            ring::RING_BYTES,
            layout.bytes,
            layout.bytes,
        )));
    }
    Ok(())
}
