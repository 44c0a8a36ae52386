//! The parts of the verbs fabric that need no device: the connection handshake's messages, the
//! translation of a region offset into a remote address and key, and the decoding of work
//! completion statuses. Unit-tested on any machine.
//!
//! Handshake: the requester (the replica that will post reads and writes on a queue pair) opens a
//! TCP connection to the responder's address and sends a [`Hello`]; the responder pairs its own
//! queue pair for that requester and plane and answers with a [`Reply`]. Both carry the protocol
//! and layout versions and the configuration hash, and each side refuses a peer whose values
//! differ from its own.
//!
//! Life watch (see `verbs/watch.rs`): a replica opens one more connection to each peer's
//! address and sends a [`Watch`]; the peer answers with a [`Life`] naming its incarnation and
//! keeps the connection open, never writing again, for as long as its process lives.
//!
//! # Invariants
//! - Messages have a fixed size and a magic; a message of another size or magic never decodes.
//! - [`target`] translates only what `mu_nostd::check_post` accepted (rule 13), which keeps every
//!   write inside the header and background area or the log area and every read below the
//!   scratch area: a read goes through the read-only key of everything below the scratch area, a
//!   write through the key of its area. A background-plane peer's log key is that read-only key,
//!   so the device itself refuses it the log (only the replication plane's queue pairs carry the
//!   grant), and no key lets a peer write the transfer area (only its owner writes there).

use mu_nostd::{Layout, ReplicaId, Status};

use super::ibv::Path;

/// Bumped when a handshake message changes.
pub const PROTOCOL_VERSION: u16 = 4;
const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"MUHI");
const REPLY_MAGIC: u32 = u32::from_le_bytes(*b"MURE");
const KICK_MAGIC: u32 = u32::from_le_bytes(*b"MUKI");
const WATCH_MAGIC: u32 = u32::from_le_bytes(*b"MUWA");
const LIFE_MAGIC: u32 = u32::from_le_bytes(*b"MULI");
/// Bytes of every handshake message.
pub const MESSAGE_BYTES: usize = 96;

/// Which plane a queue pair serves: the core's vocabulary.
pub use mu_nostd::Plane;

/// What both ends must agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `mu_nostd::layout::LAYOUT_VERSION`.
    pub layout_version: u32,
    /// `Config::hash` of the cluster configuration.
    pub config_hash: u64,
}

/// A requester asks a responder to pair a queue pair with its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Both ends' shared identity, as the requester sees it.
    pub identity: Identity,
    /// The requester's replica id.
    pub from: ReplicaId,
    /// The replica the requester believes it is talking to.
    pub to: ReplicaId,
    /// The plane of the queue pair.
    pub plane: Plane,
    /// The requester's queue pair.
    pub path: Path,
}

/// A responder tells a requester that it closed their pairing (see the module doc of
/// [`super`]): the requester should pair anew now rather than when its transport gives up.
/// Not answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kick {
    /// The responder's identity.
    pub identity: Identity,
    /// The responder's id.
    pub from: ReplicaId,
    /// The requester's id.
    pub to: ReplicaId,
    /// The plane of the pairing.
    pub plane: Plane,
    /// The first PSN of the closed pairing (the requester's), so that a late kick never closes
    /// a newer pairing.
    pub psn: u32,
}

/// A watcher asks a peer to keep a connection open for as long as its process lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch {
    /// The watcher's identity.
    pub identity: Identity,
    /// The watcher's id.
    pub from: ReplicaId,
    /// The replica it watches.
    pub to: ReplicaId,
}

/// The watched peer's answer: the life (incarnation) whose end the open connection will tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Life {
    /// The peer's identity.
    pub identity: Identity,
    /// The peer's id.
    pub from: ReplicaId,
    /// Its incarnation, as its region header names it.
    pub life: u32,
}

/// Where a responder's region is, as its peers address it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// The virtual address of region offset 0 in the responder's process.
    pub base: u64,
    /// Key of the header and background area (`0..layout.log`).
    pub background_rkey: u32,
    /// Key of the log area (`layout.log..layout.transfer`); for a background-plane peer, the
    /// read-only key below.
    pub log_rkey: u32,
    /// Key of everything peers may read (`0..layout.scratch`), read-only.
    pub read_rkey: u32,
}

impl Window {
    /// No window: the keys of a peer not yet paired.
    pub const NONE: Window = Window {
        base: 0,
        background_rkey: 0,
        log_rkey: 0,
        read_rkey: 0,
    };
}

/// Why a responder refused a requester.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Another handshake protocol.
    Protocol {
        /// The responder's version.
        ours: u16,
    },
    /// Another layout version or configuration.
    Identity {
        /// The responder's identity.
        ours: Identity,
    },
    /// The requester addressed another replica (wrong address in a config file).
    NotMe {
        /// The responder's id.
        am: ReplicaId,
    },
    /// The requester's id or plane is out of range.
    BadRequest,
    /// The responder could not set its queue pair up.
    Internal,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Protocol { ours } => write!(f, "it speaks handshake protocol {ours}"),
            Refusal::Identity { ours } => write!(
                f,
                "it runs another cluster configuration (layout version {}, config hash {:016x})",
                ours.layout_version, ours.config_hash
            ),
            Refusal::NotMe { am } => write!(f, "that address is replica {am}'s"),
            Refusal::BadRequest => write!(f, "it found the request malformed"),
            Refusal::Internal => write!(f, "it could not set up its queue pair"),
        }
    }
}

/// A responder's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Paired: its queue pair and its region.
    Accept {
        /// The responder's identity (the requester checks it too).
        identity: Identity,
        /// The responder's queue pair.
        path: Path,
        /// Its region.
        window: Window,
    },
    /// Refused.
    Refuse(Refusal),
}

/// A message that is not a handshake message of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

struct Writer {
    buf: [u8; MESSAGE_BYTES],
    at: usize,
}

impl Writer {
    fn new(magic: u32) -> Writer {
        let mut w = Writer {
            buf: [0; MESSAGE_BYTES],
            at: 0,
        };
        w.bytes(&magic.to_le_bytes());
        w.bytes(&PROTOCOL_VERSION.to_le_bytes());
        w
    }

    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }

    fn identity(&mut self, i: &Identity) {
        self.bytes(&i.layout_version.to_le_bytes());
        self.bytes(&i.config_hash.to_le_bytes());
    }

    fn path(&mut self, p: &Path) {
        self.bytes(&p.qpn.to_le_bytes());
        self.bytes(&p.psn.to_le_bytes());
        self.bytes(&p.gid);
        self.bytes(&p.lid.to_le_bytes());
        self.bytes(&p.mtu.to_le_bytes());
    }
}

struct Reader<'b> {
    buf: &'b [u8; MESSAGE_BYTES],
    at: usize,
}

impl<'b> Reader<'b> {
    /// Checks the magic; returns the reader and the sender's protocol version.
    fn new(buf: &'b [u8; MESSAGE_BYTES], magic: u32) -> Result<(Reader<'b>, u16), Malformed> {
        let mut r = Reader { buf, at: 0 };
        if r.u32() != magic {
            return Err(Malformed);
        }
        let version = r.u16();
        Ok((r, version))
    }

    /// Like [`Reader::new`], for a message that only decodes in this protocol version.
    fn current(buf: &'b [u8; MESSAGE_BYTES], magic: u32) -> Result<Reader<'b>, Malformed> {
        match Reader::new(buf, magic)? {
            (r, PROTOCOL_VERSION) => Ok(r),
            _ => Err(Malformed),
        }
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        out.copy_from_slice(&self.buf[self.at..self.at + N]);
        self.at += N;
        out
    }

    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    fn identity(&mut self) -> Identity {
        Identity {
            layout_version: self.u32(),
            config_hash: self.u64(),
        }
    }

    fn path(&mut self) -> Path {
        Path {
            qpn: self.u32(),
            psn: self.u32(),
            gid: self.take(),
            lid: self.u16(),
            mtu: self.u32(),
        }
    }
}

impl Hello {
    /// The message's bytes.
    pub fn encode(&self) -> [u8; MESSAGE_BYTES] {
        let mut w = Writer::new(HELLO_MAGIC);
        w.identity(&self.identity);
        w.bytes(&[self.from, self.to, self.plane as u8]);
        w.path(&self.path);
        w.buf
    }

    /// Decodes a hello; `Err(Some(version))` for a requester of another protocol version.
    pub fn decode(buf: &[u8; MESSAGE_BYTES]) -> Result<Hello, Option<u16>> {
        let (mut r, version) = Reader::new(buf, HELLO_MAGIC).map_err(|_| None)?;
        if version != PROTOCOL_VERSION {
            return Err(Some(version));
        }
        let identity = r.identity();
        let (from, to) = (r.u8(), r.u8());
        let plane = Plane::from_byte(r.u8()).ok_or(None)?;
        Ok(Hello {
            identity,
            from,
            to,
            plane,
            path: r.path(),
        })
    }
}

impl Kick {
    /// The message's bytes.
    pub fn encode(&self) -> [u8; MESSAGE_BYTES] {
        let mut w = Writer::new(KICK_MAGIC);
        w.identity(&self.identity);
        w.bytes(&[self.from, self.to, self.plane as u8]);
        w.bytes(&self.psn.to_le_bytes());
        w.buf
    }

    /// Decodes a kick of this protocol version.
    pub fn decode(buf: &[u8; MESSAGE_BYTES]) -> Result<Kick, Malformed> {
        let mut r = Reader::current(buf, KICK_MAGIC)?;
        let identity = r.identity();
        let (from, to) = (r.u8(), r.u8());
        let plane = Plane::from_byte(r.u8()).ok_or(Malformed)?;
        Ok(Kick {
            identity,
            from,
            to,
            plane,
            psn: r.u32(),
        })
    }
}

impl Watch {
    /// The message's bytes.
    pub fn encode(&self) -> [u8; MESSAGE_BYTES] {
        let mut w = Writer::new(WATCH_MAGIC);
        w.identity(&self.identity);
        w.bytes(&[self.from, self.to]);
        w.buf
    }

    /// Decodes a watch of this protocol version.
    pub fn decode(buf: &[u8; MESSAGE_BYTES]) -> Result<Watch, Malformed> {
        let mut r = Reader::current(buf, WATCH_MAGIC)?;
        Ok(Watch {
            identity: r.identity(),
            from: r.u8(),
            to: r.u8(),
        })
    }
}

impl Life {
    /// The message's bytes.
    pub fn encode(&self) -> [u8; MESSAGE_BYTES] {
        let mut w = Writer::new(LIFE_MAGIC);
        w.identity(&self.identity);
        w.bytes(&[self.from]);
        w.bytes(&self.life.to_le_bytes());
        w.buf
    }

    /// Decodes a life of this protocol version.
    pub fn decode(buf: &[u8; MESSAGE_BYTES]) -> Result<Life, Malformed> {
        let mut r = Reader::current(buf, LIFE_MAGIC)?;
        Ok(Life {
            identity: r.identity(),
            from: r.u8(),
            life: r.u32(),
        })
    }
}

const ACCEPT: u8 = 0;
const REFUSE_PROTOCOL: u8 = 1;
const REFUSE_IDENTITY: u8 = 2;
const REFUSE_NOT_ME: u8 = 3;
const REFUSE_BAD_REQUEST: u8 = 4;
const REFUSE_INTERNAL: u8 = 5;

impl Reply {
    /// The message's bytes.
    pub fn encode(&self) -> [u8; MESSAGE_BYTES] {
        let mut w = Writer::new(REPLY_MAGIC);
        match self {
            Reply::Accept {
                identity,
                path,
                window,
            } => {
                w.bytes(&[ACCEPT]);
                w.identity(identity);
                w.path(path);
                w.bytes(&window.base.to_le_bytes());
                w.bytes(&window.background_rkey.to_le_bytes());
                w.bytes(&window.log_rkey.to_le_bytes());
                w.bytes(&window.read_rkey.to_le_bytes());
            }
            Reply::Refuse(Refusal::Protocol { ours }) => {
                w.bytes(&[REFUSE_PROTOCOL]);
                w.bytes(&ours.to_le_bytes());
            }
            Reply::Refuse(Refusal::Identity { ours }) => {
                w.bytes(&[REFUSE_IDENTITY]);
                w.identity(ours);
            }
            Reply::Refuse(Refusal::NotMe { am }) => w.bytes(&[REFUSE_NOT_ME, *am]),
            Reply::Refuse(Refusal::BadRequest) => w.bytes(&[REFUSE_BAD_REQUEST]),
            Reply::Refuse(Refusal::Internal) => w.bytes(&[REFUSE_INTERNAL]),
        }
        w.buf
    }

    /// Decodes a reply. A refusal decodes whatever the responder's protocol version, so that a
    /// requester can say why it was refused.
    pub fn decode(buf: &[u8; MESSAGE_BYTES]) -> Result<Reply, Malformed> {
        let (mut r, version) = Reader::new(buf, REPLY_MAGIC)?;
        let verdict = r.u8();
        if verdict != ACCEPT && version != PROTOCOL_VERSION {
            return Ok(Reply::Refuse(Refusal::Protocol { ours: version }));
        }
        Ok(match verdict {
            ACCEPT if version == PROTOCOL_VERSION => Reply::Accept {
                identity: r.identity(),
                path: r.path(),
                window: Window {
                    base: r.u64(),
                    background_rkey: r.u32(),
                    log_rkey: r.u32(),
                    read_rkey: r.u32(),
                },
            },
            ACCEPT => Reply::Refuse(Refusal::Protocol { ours: version }),
            REFUSE_PROTOCOL => Reply::Refuse(Refusal::Protocol { ours: r.u16() }),
            REFUSE_IDENTITY => Reply::Refuse(Refusal::Identity { ours: r.identity() }),
            REFUSE_NOT_ME => Reply::Refuse(Refusal::NotMe { am: r.u8() }),
            REFUSE_BAD_REQUEST => Reply::Refuse(Refusal::BadRequest),
            REFUSE_INTERNAL => Reply::Refuse(Refusal::Internal),
            _ => return Err(Malformed),
        })
    }
}

/// What a responder answers `hello`, before it touches any queue pair: `Ok` when it should
/// pair, a refusal otherwise.
pub fn screen(hello: &Hello, ours: Identity, me: ReplicaId, replicas: u8) -> Result<(), Refusal> {
    if hello.identity != ours {
        return Err(Refusal::Identity { ours });
    }
    if hello.to != me {
        return Err(Refusal::NotMe { am: me });
    }
    if hello.from >= replicas || hello.from == me {
        return Err(Refusal::BadRequest);
    }
    Ok(())
}

/// The remote address and key of an operation at region offset `offset` that
/// `mu_nostd::check_post` accepted (which keeps a write inside the header and background area or
/// the log area, and a read below the scratch area); `write` says whether it writes the remote
/// region.
pub fn target(layout: &Layout, window: &Window, write: bool, offset: u32) -> (u64, u32) {
    let rkey = if !write {
        window.read_rkey
    } else if offset < layout.log {
        window.background_rkey
    } else {
        window.log_rkey
    };
    // A peer's base is whatever it sent: its addresses wrap rather than panic here (the device
    // refuses an address outside the registration).
    (window.base.wrapping_add(offset as u64), rkey)
}

/// What a work completion's status means to the core: a refusal by the peer's permissions is
/// `Denied` (Soft-RoCE reports a revoked write as `IBV_WC_REM_INV_REQ_ERR`, hardware NICs as
/// `IBV_WC_REM_ACCESS_ERR`); every other failure is `Failed`.
pub fn status(wc_status: u32) -> Status {
    use rdma_sys::ibv_wc_status as s;
    match wc_status {
        s::IBV_WC_SUCCESS => Status::Ok,
        s::IBV_WC_REM_INV_REQ_ERR | s::IBV_WC_REM_ACCESS_ERR => Status::Denied,
        _ => Status::Failed,
    }
}

/// The first packet sequence number of a queue pair's next pairing: half the 24-bit sequence
/// space away from where its last pairing stopped, so that a packet of the last pairing still
/// in flight is never taken for one of the new pairing, nor acknowledged as one.
pub fn next_psn(last: u32) -> u32 {
    (last.wrapping_add(1 << 23)) & 0x00FF_FFFF
}

#[cfg(test)]
mod tests {
    use super::*;
    use mu_nostd::Config;

    fn path(n: u32) -> Path {
        Path {
            qpn: n,
            psn: n * 3,
            gid: [n as u8; 16],
            lid: n as u16,
            mtu: 3,
        }
    }

    const ID: Identity = Identity {
        layout_version: 1,
        config_hash: 0xDEAD_BEEF_0123_4567,
    };

    #[test]
    fn messages_round_trip() {
        for plane in Plane::ALL {
            let hello = Hello {
                identity: ID,
                from: 2,
                to: 1,
                plane,
                path: path(77),
            };
            assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
        }
        let replies = [
            Reply::Accept {
                identity: ID,
                path: path(9),
                window: Window {
                    base: 0x7F00_1234_5000,
                    background_rkey: 11,
                    log_rkey: 12,
                    read_rkey: 13,
                },
            },
            Reply::Refuse(Refusal::Protocol { ours: 7 }),
            Reply::Refuse(Refusal::Identity { ours: ID }),
            Reply::Refuse(Refusal::NotMe { am: 4 }),
            Reply::Refuse(Refusal::BadRequest),
            Reply::Refuse(Refusal::Internal),
        ];
        for reply in replies {
            assert_eq!(Reply::decode(&reply.encode()), Ok(reply));
        }
        let kick = Kick {
            identity: ID,
            from: 1,
            to: 0,
            plane: Plane::Replication,
            psn: 0x12_3456,
        };
        assert_eq!(Kick::decode(&kick.encode()), Ok(kick));
        assert_eq!(Hello::decode(&kick.encode()), Err(None));
        assert_eq!(
            Kick::decode(&Reply::Refuse(Refusal::Internal).encode()),
            Err(Malformed)
        );
        let watch = Watch {
            identity: ID,
            from: 2,
            to: 0,
        };
        assert_eq!(Watch::decode(&watch.encode()), Ok(watch));
        assert_eq!(Kick::decode(&watch.encode()), Err(Malformed));
        let life = Life {
            identity: ID,
            from: 0,
            life: 0xFEED_0001,
        };
        assert_eq!(Life::decode(&life.encode()), Ok(life));
        assert_eq!(Watch::decode(&life.encode()), Err(Malformed));
    }

    #[test]
    fn foreign_messages_never_decode() {
        let hello = Hello {
            identity: ID,
            from: 0,
            to: 1,
            plane: Plane::Background,
            path: path(1),
        }
        .encode();
        // A hello is not a reply, and vice versa.
        assert_eq!(Reply::decode(&hello), Err(Malformed));
        let reply = Reply::Refuse(Refusal::BadRequest).encode();
        assert_eq!(Hello::decode(&reply), Err(None));
        // A bad plane byte.
        let mut bad = hello;
        bad[4 + 2 + 12 + 2] = 9;
        assert_eq!(Hello::decode(&bad), Err(None));
        // Another protocol version is reported as such.
        let mut other = hello;
        other[4] = 7;
        assert_eq!(Hello::decode(&other), Err(Some(7)));
        let mut refused = reply;
        refused[4] = 7;
        assert_eq!(
            Reply::decode(&refused),
            Ok(Reply::Refuse(Refusal::Protocol { ours: 7 }))
        );
        // An unknown verdict.
        let mut unknown = reply;
        unknown[6] = 200;
        assert_eq!(Reply::decode(&unknown), Err(Malformed));
    }

    #[test]
    fn screening_refuses_mismatches() {
        let hello = Hello {
            identity: ID,
            from: 0,
            to: 1,
            plane: Plane::Replication,
            path: path(1),
        };
        assert_eq!(screen(&hello, ID, 1, 3), Ok(()));
        let other = Identity {
            config_hash: 1,
            ..ID
        };
        assert_eq!(
            screen(&hello, other, 1, 3),
            Err(Refusal::Identity { ours: other })
        );
        let layout = Identity {
            layout_version: 2,
            ..ID
        };
        assert_eq!(
            screen(&hello, layout, 1, 3),
            Err(Refusal::Identity { ours: layout })
        );
        assert_eq!(screen(&hello, ID, 2, 3), Err(Refusal::NotMe { am: 2 }));
        let from_me = Hello { from: 1, ..hello };
        assert_eq!(screen(&from_me, ID, 1, 3), Err(Refusal::BadRequest));
        let outside = Hello { from: 3, ..hello };
        assert_eq!(screen(&outside, ID, 1, 3), Err(Refusal::BadRequest));
    }

    #[test]
    fn offsets_translate_to_the_key_of_their_area() {
        let layout = Layout::new(&Config::new(3));
        let window = Window {
            base: 0x1000_0000,
            background_rkey: 5,
            log_rkey: 6,
            read_rkey: 7,
        };
        let t = |write, offset| target(&layout, &window, write, offset);
        let at = |offset: u32| 0x1000_0000 + offset as u64;
        // Writes: the background area's key, the log area's key from the log's first byte.
        let heartbeat = layout.heartbeat();
        assert_eq!(t(true, heartbeat), (at(heartbeat), 5));
        assert_eq!(t(true, layout.log - 8), (at(layout.log - 8), 5));
        assert_eq!(t(true, layout.log), (at(layout.log), 6));
        let slot = layout.slot(3);
        assert_eq!(t(true, slot), (at(slot), 6));
        // Reads, anywhere below the scratch area and across areas: the read-only key.
        for offset in [
            0,
            heartbeat,
            layout.log - 8,
            slot,
            layout.transfer - 8,
            layout.transfer,
        ] {
            assert_eq!(t(false, offset), (at(offset), 7));
        }
        // A base near the top of the address space wraps instead of panicking.
        let high = Window {
            base: u64::MAX - 4,
            ..window
        };
        assert_eq!(target(&layout, &high, false, 16).0, 11);
    }

    #[test]
    fn statuses_decode() {
        use rdma_sys::ibv_wc_status as s;
        assert_eq!(status(s::IBV_WC_SUCCESS), Status::Ok);
        assert_eq!(status(s::IBV_WC_REM_INV_REQ_ERR), Status::Denied);
        assert_eq!(status(s::IBV_WC_REM_ACCESS_ERR), Status::Denied);
        for failed in [
            s::IBV_WC_WR_FLUSH_ERR,
            s::IBV_WC_RETRY_EXC_ERR,
            s::IBV_WC_REM_OP_ERR,
            s::IBV_WC_LOC_PROT_ERR,
            s::IBV_WC_GENERAL_ERR,
            999,
        ] {
            assert_eq!(status(failed), Status::Failed);
        }
    }

    #[test]
    fn psns_of_successive_pairings_are_far_apart() {
        for last in [0, 1, 0x7F_FFFF, 0x80_0000, 0xFF_FFFF] {
            let next = next_psn(last);
            assert!(next <= 0xFF_FFFF);
            let distance = next.wrapping_sub(last) & 0xFF_FFFF;
            assert_eq!(distance, 1 << 23);
        }
    }
}
