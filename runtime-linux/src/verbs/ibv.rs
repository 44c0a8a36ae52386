//! Owners of the verbs objects the fabric uses: device list, device context, protection domain,
//! memory region, completion queue and queue pair. Every call into libibverbs is in this file,
//! each `unsafe` block small and with its reason. Two obligations no type here can check are left
//! to the callers as `unsafe` functions: a registered memory region must outlive its registration
//! ([`Mr::register`]), and a posted work request must take its bytes from registered memory
//! ([`Qp::post`]).
//!
//! Control-path calls (`ibv_open_device`, `ibv_reg_mr`, `ibv_create_qp`, `ibv_modify_qp`, ...) are
//! libibverbs symbols; the hot-path calls (`ibv_post_send`, `ibv_poll_cq`) are `rdma-sys`'s inline
//! functions that call the provider through the context's ops table, as the C header does.
//!
//! # Invariants
//! - Every pointer an owner holds is the non-null result of the call that created it, and is
//!   released exactly once, in `Drop`, after everything created from it (each owner keeps an
//!   `Arc` of its parent, so parents outlive children).
//! - A memory region never outlives the memory it covers: [`Mr::register`] is `unsafe` and its
//!   caller keeps the memory alive for the region's lifetime.

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::ptr;
use std::sync::Arc;

use rdma_sys::*;

/// A verbs call that failed.
#[derive(Debug)]
pub struct VerbsError {
    /// What was attempted, e.g. "open device rxe0".
    pub what: String,
    /// Why it failed.
    pub error: io::Error,
}

impl fmt::Display for VerbsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.error)
    }
}

impl std::error::Error for VerbsError {}

/// The result of a verbs call.
pub type Result<T> = std::result::Result<T, VerbsError>;

fn failed(what: impl Into<String>) -> VerbsError {
    VerbsError {
        what: what.into(),
        error: io::Error::last_os_error(),
    }
}

/// libibverbs functions return 0 or an errno value (not -1 with `errno` set). The message is
/// built only on failure: queue pair changes run on the planes' threads, which never allocate.
fn check(rc: i32, what: impl FnOnce() -> String) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    Err(VerbsError {
        what: what(),
        error: io::Error::from_raw_os_error(rc.abs()),
    })
}

/// `ibv_port_attr.link_layer` values (macros in the C header, absent from the bindings).
pub const LINK_LAYER_INFINIBAND: u8 = 1;
/// RoCE.
pub const LINK_LAYER_ETHERNET: u8 = 2;

/// The RDMA devices of this host.
pub struct DeviceList {
    list: *mut *mut ibv_device,
    count: usize,
}

impl DeviceList {
    /// Lists the devices. An empty list is not an error here; callers say what is missing.
    pub fn get() -> Result<DeviceList> {
        let mut count = 0;
        // SAFETY: the call writes the device count through the pointer, which points at
        // `count`, a live local; the list it returns is freed once, in `Drop`.
        let list = unsafe { ibv_get_device_list(&mut count) };
        if list.is_null() {
            let error = io::Error::last_os_error();
            // No uverbs support at all (no module, no /sys/class/infiniband): no devices.
            if matches!(
                error.raw_os_error(),
                Some(libc::ENOSYS) | Some(libc::ENOENT) | None | Some(0)
            ) {
                return Ok(DeviceList { list, count: 0 });
            }
            return Err(VerbsError {
                what: "list RDMA devices".into(),
                error,
            });
        }
        Ok(DeviceList {
            list,
            count: usize::try_from(count).unwrap_or(0),
        })
    }

    /// The devices' names, in list order.
    pub fn names(&self) -> Vec<String> {
        (0..self.count).map(|i| self.name(i)).collect()
    }

    fn name(&self, i: usize) -> String {
        assert!(i < self.count);
        // SAFETY: `i < count` (asserted), so `list + i` is inside the array of `count` device
        // pointers libibverbs returned (not null: `count` is 0 for a null list), which lives
        // until `Drop`; a device's name is a NUL-terminated string the device owns, and the
        // device lives as long as the list; the `CStr` is copied out before `self` can go.
        unsafe { CStr::from_ptr(ibv_get_device_name(*self.list.add(i))) }
            .to_string_lossy()
            .into_owned()
    }

    /// Opens the device called `name`.
    pub fn open(&self, name: &str) -> Result<Arc<Context>> {
        let Some(i) = (0..self.count).find(|&i| self.name(i) == name) else {
            return Err(VerbsError {
                what: format!("open RDMA device {name}"),
                error: io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no such device (this host has: {})",
                        if self.count == 0 {
                            "none".to_owned()
                        } else {
                            self.names().join(", ")
                        }
                    ),
                ),
            });
        };
        // SAFETY: `i < count` (`find` over `0..count`): the device pointer comes from the live
        // list; the context is closed once, in `Context::drop`, and does not depend on the list
        // staying allocated (libibverbs keeps an opened device referenced).
        let context = unsafe { ibv_open_device(*self.list.add(i)) };
        if context.is_null() {
            return Err(failed(format!("open RDMA device {name}")));
        }
        Ok(Arc::new(Context {
            context,
            name: name.to_owned(),
        }))
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        if !self.list.is_null() {
            // SAFETY: the non-null list `ibv_get_device_list` returned, freed once (here); no
            // pointer into it outlives `self` (`name` copies, `open` keeps only the context).
            unsafe { ibv_free_device_list(self.list) };
        }
    }
}

/// An open device.
pub struct Context {
    context: *mut ibv_context,
    name: String,
}

// SAFETY: libibverbs is thread-safe: a context may be used, and closed, from any thread, not
// only the one that opened it (the library and its providers lock internally).
unsafe impl Send for Context {}
// SAFETY: through `&Context` threads only query the device (`device_attr`, `port_attr`, `gid`)
// or create children from it, calls libibverbs allows concurrently on one context.
unsafe impl Sync for Context {}

/// What `ibv_query_device` says, the parts a deployment cares about.
#[derive(Clone, Debug)]
pub struct DeviceAttr {
    /// Firmware version.
    pub firmware: String,
    /// Physical ports.
    pub ports: u8,
    /// Queue pairs.
    pub max_qp: i32,
    /// Work requests per queue.
    pub max_qp_wr: i32,
    /// Completion queue entries.
    pub max_cqe: i32,
    /// Memory regions.
    pub max_mr: i32,
    /// Bytes per memory region.
    pub max_mr_size: u64,
    /// Outstanding RDMA reads per queue pair, as their target.
    pub max_qp_rd_atom: i32,
    /// Outstanding RDMA reads per queue pair, as their initiator.
    pub max_qp_init_rd_atom: i32,
}

/// What `ibv_query_port` says.
#[derive(Clone, Copy, Debug)]
pub struct PortAttr {
    /// `IBV_PORT_*`.
    pub state: u32,
    /// Active MTU, as `ibv_mtu`.
    pub active_mtu: u32,
    /// Local id (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// Entries in the GID table.
    pub gid_table_len: i32,
    /// [`LINK_LAYER_INFINIBAND`] or [`LINK_LAYER_ETHERNET`].
    pub link_layer: u8,
}

impl PortAttr {
    /// Whether the port can carry traffic.
    pub fn active(&self) -> bool {
        self.state == ibv_port_state::IBV_PORT_ACTIVE
    }
}

impl Context {
    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's limits.
    pub fn device_attr(&self) -> Result<DeviceAttr> {
        // SAFETY: `ibv_device_attr` is plain old data (integers, an integer array, a GUID), for
        // which all-zero bytes are a valid value.
        let mut attr: ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: `self.context` is open until `self` drops; the call writes one
        // `ibv_device_attr` through the pointer, which points at `attr`, a live local.
        let rc = unsafe { ibv_query_device(self.context, &mut attr) };
        check(rc, || format!("query device {}", self.name))?;
        // Up to the first NUL, if the provider wrote one: the array is read in bounds either way.
        let fw_ver = attr.fw_ver.map(|c| c as u8);
        let end = fw_ver.iter().position(|&b| b == 0).unwrap_or(fw_ver.len());
        let firmware = String::from_utf8_lossy(&fw_ver[..end]).into_owned();
        Ok(DeviceAttr {
            firmware,
            ports: attr.phys_port_cnt,
            max_qp: attr.max_qp,
            max_qp_wr: attr.max_qp_wr,
            max_cqe: attr.max_cqe,
            max_mr: attr.max_mr,
            max_mr_size: attr.max_mr_size,
            max_qp_rd_atom: attr.max_qp_rd_atom,
            max_qp_init_rd_atom: attr.max_qp_init_rd_atom,
        })
    }

    /// Port `port`'s state.
    pub fn port_attr(&self, port: u8) -> Result<PortAttr> {
        // SAFETY: `ibv_port_attr` is plain old data (integers only), for which all-zero bytes
        // are a valid value.
        let mut attr: ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: `self.context` is open until `self` drops; the wrapper writes one
        // `ibv_port_attr` (the size it passes to the provider is this struct's) through the
        // pointer, which points at `attr`, a live local.
        let rc = unsafe { ___ibv_query_port(self.context, port, &mut attr) };
        check(rc, || format!("query port {port} of {}", self.name))?;
        Ok(PortAttr {
            state: attr.state,
            active_mtu: attr.active_mtu,
            lid: attr.lid,
            gid_table_len: attr.gid_tbl_len,
            link_layer: attr.link_layer,
        })
    }

    /// Entry `index` of port `port`'s GID table.
    pub fn gid(&self, port: u8, index: u8) -> Result<[u8; 16]> {
        let mut gid = ibv_gid { raw: [0; 16] };
        // SAFETY: `self.context` is open until `self` drops; the call writes one 16-byte
        // `ibv_gid` through the pointer, which points at `gid`, a live local.
        let rc = unsafe { ibv_query_gid(self.context, port, index as i32, &mut gid) };
        check(rc, || {
            format!("query GID {index} of {} port {port}", self.name)
        })?;
        // SAFETY: `gid` was initialised through `raw`, and every bit pattern the call wrote
        // into the 16 bytes of the union is a valid `[u8; 16]`.
        Ok(unsafe { gid.raw })
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: opened in `DeviceList::open`, closed once (here); every child object (domain,
        // queues, queue pairs, regions) holds an `Arc` of this context, directly or through its
        // domain, so all of them were destroyed before this runs.
        unsafe { ibv_close_device(self.context) };
    }
}

/// A protection domain.
pub struct Pd {
    pd: *mut ibv_pd,
    context: Arc<Context>,
}

// SAFETY: libibverbs is thread-safe: a protection domain may be used, and deallocated, from any
// thread.
unsafe impl Send for Pd {}
// SAFETY: through `&Pd` threads only register memory and create queue pairs in the domain, which
// libibverbs allows concurrently.
unsafe impl Sync for Pd {}

impl Pd {
    /// Allocates a protection domain on `context`.
    pub fn new(context: &Arc<Context>) -> Result<Arc<Pd>> {
        // SAFETY: `context` is open (the `Arc` keeps it so, and the domain keeps a clone); the
        // domain is deallocated once, in `Drop`.
        let pd = unsafe { ibv_alloc_pd(context.context) };
        if pd.is_null() {
            return Err(failed(format!(
                "allocate a protection domain on {}",
                context.name
            )));
        }
        Ok(Arc::new(Pd {
            pd,
            context: context.clone(),
        }))
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`, deallocated once (here); every region and queue pair in
        // the domain holds an `Arc` of it, so all of them were destroyed before this runs.
        unsafe { ibv_dealloc_pd(self.pd) };
    }
}

/// Access rights, as `ibv_access_flags` bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access(pub u32);

impl Access {
    /// Nothing remote.
    pub const NONE: Access = Access(0);
    /// The local device may write (needed for reads landing here).
    pub const LOCAL_WRITE: Access = Access(ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0);
    /// Remote reads.
    pub const REMOTE_READ: Access = Access(ibv_access_flags::IBV_ACCESS_REMOTE_READ.0);
    /// Remote writes.
    pub const REMOTE_WRITE: Access = Access(ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0);

    /// Both sets of rights.
    pub const fn with(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }
}

/// A registered memory region.
pub struct Mr {
    mr: *mut ibv_mr,
    _pd: Arc<Pd>,
}

// SAFETY: libibverbs is thread-safe: a registration may be deregistered from any thread.
unsafe impl Send for Mr {}
// SAFETY: through `&Mr` threads only read its keys, which `ibv_reg_mr` wrote once and nothing
// changes until `Drop`.
unsafe impl Sync for Mr {}

impl Mr {
    /// Registers `len` bytes at `addr` with `access`.
    ///
    /// # Safety
    /// The memory must stay mapped until the returned region is dropped, and, for as long as it
    /// is registered, be accessed only atomically or through raw pointers, never through Rust
    /// references to plain bytes: with `access` beyond [`Access::NONE`] the device may write it
    /// at any time (remote writes, local reads landing).
    pub unsafe fn register(pd: &Arc<Pd>, addr: *mut u8, len: usize, access: Access) -> Result<Mr> {
        // SAFETY: `pd` is live (the `Arc`, and the clone the region keeps); `addr..addr + len`
        // is mapped for as long as the region lives and may change under the device's writes
        // (the caller's promise); the region is deregistered once, in `Drop`.
        let mr = unsafe { ibv_reg_mr(pd.pd, addr.cast(), len, access.0 as i32) };
        if mr.is_null() {
            return Err(failed(format!(
                "register {len} bytes of memory with {} (is `ulimit -l` large enough?)",
                pd.context.name
            )));
        }
        Ok(Mr {
            mr,
            _pd: pd.clone(),
        })
    }

    /// The key local work requests use.
    pub fn lkey(&self) -> u32 {
        // SAFETY: `self.mr` points at the `ibv_mr` that `ibv_reg_mr` returned, valid until
        // `Drop` deregisters it; nothing writes its keys meanwhile.
        unsafe { (*self.mr).lkey }
    }

    /// The key peers use.
    pub fn rkey(&self) -> u32 {
        // SAFETY: `self.mr` is valid until `Drop`, and its keys never change (as in `lkey`).
        unsafe { (*self.mr).rkey }
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: registered in `register`, deregistered once (here), while its domain is
        // still allocated (the region holds an `Arc` of it).
        unsafe { ibv_dereg_mr(self.mr) };
    }
}

/// A completion queue.
pub struct Cq {
    cq: *mut ibv_cq,
    _context: Arc<Context>,
}

// SAFETY: libibverbs is thread-safe: a completion queue may be polled and destroyed from any
// thread.
unsafe impl Send for Cq {}
// SAFETY: through `&Cq` threads only poll, which libibverbs providers serialise per queue with
// their own lock (and each plane polls only its own queue anyway).
unsafe impl Sync for Cq {}

/// A work completion, as polled.
pub type Wc = ibv_wc;

/// An empty completion to fill polling buffers with.
pub fn empty_wc() -> Wc {
    // SAFETY: `ibv_wc` is plain old data (integers and a union of integers), for which
    // all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

impl Cq {
    /// A queue of `entries` completions.
    pub fn new(context: &Arc<Context>, entries: i32) -> Result<Arc<Cq>> {
        // SAFETY: `context` is open (the `Arc`, and the clone the queue keeps); a null user context
        // (`cq_context`) and a null channel are allowed (no completion events); destroyed once, in
        // `Drop`.
        let cq = unsafe {
            ibv_create_cq(
                context.context,
                entries,
                ptr::null_mut(),
                ptr::null_mut(),
                0,
            )
        };
        if cq.is_null() {
            return Err(failed(format!(
                "create a completion queue of {entries} entries on {}",
                context.name
            )));
        }
        Ok(Arc::new(Cq {
            cq,
            _context: context.clone(),
        }))
    }

    /// Moves up to `out.len()` completions into `out`; returns how many, or the provider's
    /// error.
    pub fn poll(&self, out: &mut [Wc]) -> std::result::Result<usize, i32> {
        let n = out.len().min(i32::MAX as usize) as i32;
        // SAFETY: `self.cq` is live until `Drop`; the call writes at most `n <= out.len()`
        // `ibv_wc` entries through the pointer, which points at `out`, borrowed mutably.
        let rc = unsafe { ibv_poll_cq(self.cq, n, out.as_mut_ptr()) };
        usize::try_from(rc).map_err(|_| rc)
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once (here); every queue pair using it holds an
        // `Arc` of it, so all of them were destroyed before this runs.
        unsafe { ibv_destroy_cq(self.cq) };
    }
}

/// Where the other end of a queue pair is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Path {
    /// Its queue pair number.
    pub qpn: u32,
    /// The first packet sequence number it sends (our receive PSN).
    pub psn: u32,
    /// Its GID (RoCE and routed InfiniBand address by GID).
    pub gid: [u8; 16],
    /// Its local id (InfiniBand).
    pub lid: u16,
    /// The MTU both ends support, as `ibv_mtu`.
    pub mtu: u32,
}

/// This end's addressing for [`Qp::ready`].
#[derive(Clone, Copy, Debug)]
pub struct Local {
    /// Device port.
    pub port: u8,
    /// GID table index to send from.
    pub gid_index: u8,
    /// Outstanding RDMA reads this end issues.
    pub rd_initiator: u8,
    /// Outstanding RDMA reads this end serves.
    pub rd_target: u8,
}

/// Transport timeout exponent: 4.096 µs × 2^10 ≈ 4 ms before a retransmission. The core's
/// own deadlines find dead peers sooner; this only bounds how long a lost packet is retried.
const TIMEOUT: u8 = 10;
/// Retransmissions before a work request fails with `IBV_WC_RETRY_EXC_ERR`.
const RETRY_COUNT: u8 = 3;

/// A reliable-connection queue pair.
pub struct Qp {
    qp: *mut ibv_qp,
    max_inline: u32,
    _pd: Arc<Pd>,
    _cqs: (Arc<Cq>, Arc<Cq>),
}

// SAFETY: libibverbs is thread-safe: a queue pair may be used and destroyed from any thread.
unsafe impl Send for Qp {}
// SAFETY: through `&Qp` threads post (`ibv_post_send`, which providers serialise per send queue
// with their own lock), query and modify (system calls the kernel serialises); besides, one
// plane's thread does the posting and the fabric's locks serialise the state changes.
unsafe impl Sync for Qp {}

fn attr() -> ibv_qp_attr {
    // SAFETY: `ibv_qp_attr` is plain old data (integers, and integer unions and arrays in its
    // address vectors), for which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

impl Qp {
    /// A queue pair sending up to `depth` work requests, asking for `inline` bytes of inline
    /// data (the device may give fewer; see [`Qp::max_inline`]).
    pub fn new(
        pd: &Arc<Pd>,
        send: &Arc<Cq>,
        recv: &Arc<Cq>,
        depth: u32,
        inline: u32,
    ) -> Result<Qp> {
        let mut init = ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: send.cq,
            recv_cq: recv.cq,
            srq: ptr::null_mut(),
            cap: ibv_qp_cap {
                max_send_wr: depth,
                max_recv_wr: 1,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: inline,
            },
            qp_type: ibv_qp_type::IBV_QPT_RC,
            sq_sig_all: 1,
        };
        // SAFETY: `pd`, `send` and `recv` are live (the `Arc`s, and the clones the queue pair
        // keeps); `init` is a fully initialised local that the call reads and updates (`cap`);
        // the queue pair is destroyed once, in `Drop`.
        let mut qp = unsafe { ibv_create_qp(pd.pd, &mut init) };
        if qp.is_null() && inline > 0 {
            // Some devices refuse any inline data; writes then always gather from memory.
            init.cap.max_inline_data = 0;
            // SAFETY: as for the first try: live domain and queues, `init` a live local.
            qp = unsafe { ibv_create_qp(pd.pd, &mut init) };
        }
        if qp.is_null() {
            return Err(failed(format!(
                "create a queue pair ({depth} work requests) on {}",
                pd.context.name
            )));
        }
        Ok(Qp {
            qp,
            max_inline: init.cap.max_inline_data,
            _pd: pd.clone(),
            _cqs: (send.clone(), recv.clone()),
        })
    }

    /// Its number.
    pub fn qpn(&self) -> u32 {
        // SAFETY: `self.qp` points at the `ibv_qp` that `ibv_create_qp` returned, valid until
        // `Drop`; its number is set at creation and never changes.
        unsafe { (*self.qp).qp_num }
    }

    /// The largest write sent inline.
    pub fn max_inline(&self) -> u32 {
        self.max_inline
    }

    fn modify(&self, attr: &mut ibv_qp_attr, mask: ibv_qp_attr_mask, what: &str) -> Result<()> {
        // SAFETY: `self.qp` is live until `Drop`; the call reads the fields of `attr` (a live,
        // fully initialised struct, borrowed) that `mask` names.
        let rc = unsafe { ibv_modify_qp(self.qp, attr, mask.0 as i32) };
        check(rc, || format!("queue pair {}: {what}", self.qpn()))
    }

    /// To RESET: drops every outstanding work request; nothing more is sent or accepted.
    pub fn reset(&self) -> Result<()> {
        let mut a = attr();
        a.qp_state = ibv_qp_state::IBV_QPS_RESET;
        self.modify(&mut a, ibv_qp_attr_mask::IBV_QP_STATE, "reset")
    }

    /// To ERROR: outstanding work requests complete with `IBV_WC_WR_FLUSH_ERR`.
    pub fn fail(&self) -> Result<()> {
        let mut a = attr();
        a.qp_state = ibv_qp_state::IBV_QPS_ERR;
        self.modify(&mut a, ibv_qp_attr_mask::IBV_QP_STATE, "move to error")
    }

    /// From RESET through INIT, RTR to RTS, connected to `remote`, sending from `psn`, letting
    /// the remote end do what `access` allows.
    pub fn ready(&self, local: &Local, remote: &Path, psn: u32, access: Access) -> Result<()> {
        use ibv_qp_attr_mask as m;
        let mut a = attr();
        a.qp_state = ibv_qp_state::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = local.port;
        a.qp_access_flags = access.0;
        self.modify(
            &mut a,
            m::IBV_QP_STATE | m::IBV_QP_PKEY_INDEX | m::IBV_QP_PORT | m::IBV_QP_ACCESS_FLAGS,
            "RESET to INIT",
        )?;
        let mut a = attr();
        a.qp_state = ibv_qp_state::IBV_QPS_RTR;
        a.path_mtu = remote.mtu;
        a.dest_qp_num = remote.qpn;
        a.rq_psn = remote.psn;
        a.max_dest_rd_atomic = local.rd_target;
        a.min_rnr_timer = 12;
        a.ah_attr.is_global = 1;
        a.ah_attr.dlid = remote.lid;
        a.ah_attr.port_num = local.port;
        a.ah_attr.grh.dgid = ibv_gid { raw: remote.gid };
        a.ah_attr.grh.sgid_index = local.gid_index;
        a.ah_attr.grh.hop_limit = 64;
        self.modify(
            &mut a,
            m::IBV_QP_STATE
                | m::IBV_QP_AV
                | m::IBV_QP_PATH_MTU
                | m::IBV_QP_DEST_QPN
                | m::IBV_QP_RQ_PSN
                | m::IBV_QP_MAX_DEST_RD_ATOMIC
                | m::IBV_QP_MIN_RNR_TIMER,
            "INIT to RTR",
        )?;
        let mut a = attr();
        a.qp_state = ibv_qp_state::IBV_QPS_RTS;
        a.sq_psn = psn;
        a.timeout = TIMEOUT;
        a.retry_cnt = RETRY_COUNT;
        a.rnr_retry = 7;
        a.max_rd_atomic = local.rd_initiator;
        self.modify(
            &mut a,
            m::IBV_QP_STATE
                | m::IBV_QP_SQ_PSN
                | m::IBV_QP_TIMEOUT
                | m::IBV_QP_RETRY_CNT
                | m::IBV_QP_RNR_RETRY
                | m::IBV_QP_MAX_QP_RD_ATOMIC,
            "RTR to RTS",
        )
    }

    /// Changes what the remote end may do while the queue pair stays ready to send: the fast
    /// permission switch.
    pub fn set_access(&self, access: Access) -> Result<()> {
        let mut a = attr();
        a.qp_access_flags = access.0;
        self.modify(
            &mut a,
            ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS,
            "change access flags",
        )
    }

    /// The next packet sequence number it would send, and the next it expects.
    pub fn psns(&self) -> Result<(u32, u32)> {
        let mut a = attr();
        // SAFETY: `ibv_qp_init_attr` is plain old data (integers and pointers, null when zero),
        // for which all-zero bytes are a valid value.
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        let mask = ibv_qp_attr_mask::IBV_QP_SQ_PSN | ibv_qp_attr_mask::IBV_QP_RQ_PSN;
        // SAFETY: `self.qp` is live until `Drop`; the call writes one `ibv_qp_attr` and one
        // `ibv_qp_init_attr` through the pointers, which point at `a` and `init`, live locals.
        let rc = unsafe { ibv_query_qp(self.qp, &mut a, mask.0 as i32, &mut init) };
        check(rc, || format!("queue pair {}: query", self.qpn()))?;
        Ok((a.sq_psn, a.rq_psn))
    }

    /// Posts one signalled RDMA write or read of `len` bytes between local memory at `local`
    /// (covered by `lkey`) and remote memory at `remote` (covered by `rkey`). Returns the
    /// provider's errno when the work request was not posted (`ENOMEM`: send queue full).
    ///
    /// # Safety
    /// `local..local+len` must be memory registered under `lkey` that stays mapped until the
    /// work request completes or the queue pair is reset or destroyed, and that is accessed only
    /// atomically or through raw pointers meanwhile (a read lands there at any time).
    #[allow(clippy::too_many_arguments)] // The fields of one work request.
    pub unsafe fn post(
        &self,
        op: Op,
        wr_id: u64,
        local: u64,
        len: u32,
        lkey: u32,
        remote: u64,
        rkey: u32,
    ) -> std::result::Result<(), i32> {
        let mut sge = ibv_sge {
            addr: local,
            length: len,
            lkey,
        };
        let mut wr = work_request(op, self.max_inline, wr_id, &mut sge, remote, rkey);
        let mut bad = ptr::null_mut();
        // SAFETY: `self.qp` is live until `Drop`; `wr` and `sge` are live locals for the call
        // (the provider copies them, and inline data, before returning) and `bad` a live
        // out-pointer; the memory the work request names is registered and stays mapped until
        // it completes (the caller's promise).
        let rc = unsafe { ibv_post_send(self.qp, &mut wr, &mut bad) };
        if rc == 0 {
            Ok(())
        } else {
            Err(rc)
        }
    }
}

impl Drop for Qp {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once (here), while its domain and queues are
        // still live (it holds `Arc`s of them); outstanding work requests are flushed by the
        // destruction, so the device touches no memory for them afterwards.
        unsafe { ibv_destroy_qp(self.qp) };
    }
}

/// The work request of one signalled RDMA write or read of `sge`'s bytes to or from `remote`
/// (covered by `rkey`); a write no longer than `max_inline` goes inline.
fn work_request(
    op: Op,
    max_inline: u32,
    wr_id: u64,
    sge: &mut ibv_sge,
    remote: u64,
    rkey: u32,
) -> ibv_send_wr {
    let signaled = ibv_send_flags::IBV_SEND_SIGNALED.0;
    let (opcode, send_flags) = match op {
        Op::Write if sge.length <= max_inline => (
            ibv_wr_opcode::IBV_WR_RDMA_WRITE,
            signaled | ibv_send_flags::IBV_SEND_INLINE.0,
        ),
        Op::Write => (ibv_wr_opcode::IBV_WR_RDMA_WRITE, signaled),
        Op::Read => (ibv_wr_opcode::IBV_WR_RDMA_READ, signaled),
    };
    ibv_send_wr {
        wr_id,
        next: ptr::null_mut(),
        sg_list: sge,
        num_sge: 1,
        opcode,
        send_flags,
        imm_data_invalidated_rkey_union: imm_data_invalidated_rkey_union_t { imm_data: 0 },
        wr: wr_t {
            rdma: rdma_t {
                remote_addr: remote,
                rkey,
            },
        },
        qp_type: qp_type_t {
            xrc: xrc_t { remote_srqn: 0 },
        },
        bind_mw_tso_union: bind_mw_tso_union_t {
            tso: tso_t {
                hdr: ptr::null_mut(),
                hdr_sz: 0,
                mss: 0,
            },
        },
    }
}

/// What a work request does: the core's vocabulary.
pub use mu_nostd::Op;

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(op: Op, len: u32) -> (u32, u32, u64, u32, u64, u32) {
        let mut sge = ibv_sge {
            addr: 0x1000,
            length: len,
            lkey: 7,
        };
        let wr = work_request(op, 64, 42, &mut sge, 0xABC0, 9);
        assert_eq!((wr.num_sge, wr.next), (1, ptr::null_mut()));
        // SAFETY: `work_request` initialised the `rdma` member of the `wr` union (all integers,
        // so reading it is valid); `sg_list` points at `sge`, a live local of this frame.
        let (remote, rkey, sge_addr) =
            unsafe { (wr.wr.rdma.remote_addr, wr.wr.rdma.rkey, (*wr.sg_list).addr) };
        assert_eq!(sge_addr, 0x1000);
        (wr.opcode, wr.send_flags, remote, rkey, wr.wr_id, len)
    }

    #[test]
    fn work_requests_encode_the_operation() {
        let signaled = ibv_send_flags::IBV_SEND_SIGNALED.0;
        let inline = ibv_send_flags::IBV_SEND_INLINE.0;
        let write = ibv_wr_opcode::IBV_WR_RDMA_WRITE;
        let read = ibv_wr_opcode::IBV_WR_RDMA_READ;
        // Records go inline, slots are gathered from registered memory, reads never inline.
        assert_eq!(
            encoded(Op::Write, 16),
            (write, signaled | inline, 0xABC0, 9, 42, 16)
        );
        assert_eq!(
            encoded(Op::Write, 64),
            (write, signaled | inline, 0xABC0, 9, 42, 64)
        );
        assert_eq!(encoded(Op::Write, 65), (write, signaled, 0xABC0, 9, 42, 65));
        assert_eq!(encoded(Op::Read, 16), (read, signaled, 0xABC0, 9, 42, 16));
    }
}
