//! The life watch: certain death over TCP (rule 12 of the fabric contract), for the verbs
//! fabric, whose queue pairs only fail once the transport's retries run out.
//!
//! Every replica keeps one TCP connection open to each peer's handshake address: it sends a
//! [`Watch`]; the peer answers with a [`Life`] naming its incarnation and keeps the connection
//! open, never writing on it again, for as long as its process lives. When that process ends
//! (a crash, a kill, a clean exit) its kernel closes the connection. A connection may also end
//! for another reason (the network reset it), so its end alone proves nothing: the watcher asks
//! again at once, and the life ended only when the peer's address refuses the connection (no
//! process listens there: the kernel closed the listener with the process) or answers with
//! another life (a successor runs already). A peer that is slow, stopped or cut off keeps its
//! connection, or cannot be asked: it is never reported.
//!
//! # Invariants
//! - A life is reported ended only after its watch connection ended and the peer's address then
//!   refused a connection or named another life.
//! - The reported life only changes to the latest life seen ending; it stays reported after the
//!   peer restarted (the core ignores a notice that names a life it no longer trusts).
//! - A replica keeps at most one watch connection per peer: a new watch from a peer replaces the
//!   one before (the watcher opens a new one only after it gave up on the old one).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use mu_nostd::ReplicaId;

use super::wire::{Identity, Life, Watch, MESSAGE_BYTES};

/// How long asking for a watch may take on the wire.
const ASK_TIMEOUT: Duration = Duration::from_millis(250);
/// First and longest wait between failed attempts to ask a peer.
const BACKOFF_MIN: Duration = Duration::from_millis(2);
const BACKOFF_MAX: Duration = Duration::from_millis(100);
/// An [`Deaths`] word: this bit, and the life that ended.
const ENDED: u64 = 1 << 32;

/// The lives of peers this replica saw end, per peer.
pub struct Deaths {
    ended: Vec<AtomicU64>,
}

impl Deaths {
    /// Nothing seen yet, for `replicas` replicas.
    pub fn new(replicas: u8) -> Deaths {
        Deaths {
            ended: (0..replicas).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The latest life of `peer` seen ending, if any.
    pub fn ended(&self, peer: ReplicaId) -> Option<u32> {
        let word = self.ended.get(peer as usize)?.load(Ordering::Acquire);
        (word & ENDED != 0).then_some(word as u32)
    }

    fn record(&self, peer: ReplicaId, life: u32) {
        self.ended[peer as usize].store(ENDED | u64::from(life), Ordering::Release);
    }
}

/// The watch connections peers opened to this replica, kept open for the life of the process.
pub struct Kept {
    streams: Mutex<Vec<Option<TcpStream>>>,
}

impl Kept {
    /// None kept yet, for `replicas` replicas.
    pub fn new(replicas: u8) -> Kept {
        Kept {
            streams: Mutex::new((0..replicas).map(|_| None).collect()),
        }
    }

    /// Answers `watch`, read from `stream`, with this replica's `life`, and keeps the stream
    /// open. A watch of another cluster, or not meant for `me`, is dropped unanswered and
    /// unlogged: its watcher asks again and again, and the handshake already says what is wrong.
    pub fn answer(
        &self,
        mut stream: TcpStream,
        watch: &Watch,
        ours: Identity,
        me: ReplicaId,
        life: u32,
    ) -> io::Result<()> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let valid = watch.identity == ours && watch.to == me && watch.from != me;
        let Some(slot) = streams.get_mut(watch.from as usize).filter(|_| valid) else {
            return Ok(());
        };
        let answer = Life {
            identity: ours,
            from: me,
            life,
        };
        stream.write_all(&answer.encode())?;
        *slot = Some(stream);
        Ok(())
    }
}

/// Why a peer gave no life.
enum Unanswered {
    /// Nothing listens at its address: its process is gone.
    Refused,
    /// Anything else (unreachable, slow, a half-open connection): nothing certain.
    Unknown,
}

/// Watches `watch.to` at `address` for as long as this process lives, recording each of its
/// lives that ends in `deaths`.
pub fn watch_forever(address: SocketAddr, watch: Watch, deaths: &Deaths) -> ! {
    let mut backoff = Backoff::new();
    loop {
        let Ok((mut stream, mut life)) = ask(address, &watch) else {
            backoff.wait();
            continue;
        };
        backoff = Backoff::new();
        loop {
            wait_for_end(&mut stream);
            match confirm(address, &watch) {
                Ok((next, next_life)) => {
                    if next_life != life {
                        deaths.record(watch.to, life);
                    }
                    (stream, life) = (next, next_life);
                }
                Err(()) => {
                    deaths.record(watch.to, life);
                    break;
                }
            }
        }
    }
}

/// After a watch connection ended: asks again until the peer answers (with the same life, or a
/// successor's) or refuses (`Err`: that life ended and no successor listens yet). While the
/// peer cannot be asked, nothing is certain and its life is still trusted.
fn confirm(address: SocketAddr, watch: &Watch) -> Result<(TcpStream, u32), ()> {
    let mut backoff = Backoff::new();
    loop {
        match ask(address, watch) {
            Ok(answered) => return Ok(answered),
            Err(Unanswered::Refused) => return Err(()),
            Err(Unanswered::Unknown) => backoff.wait(),
        }
    }
}

/// Opens a watch connection and reads the peer's life; the stream is left blocking.
fn ask(address: SocketAddr, watch: &Watch) -> Result<(TcpStream, u32), Unanswered> {
    let mut stream = TcpStream::connect_timeout(&address, ASK_TIMEOUT).map_err(|e| {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            Unanswered::Refused
        } else {
            Unanswered::Unknown
        }
    })?;
    let life = exchange(&mut stream, watch).map_err(|_| Unanswered::Unknown)?;
    Ok((stream, life))
}

fn exchange(stream: &mut TcpStream, watch: &Watch) -> io::Result<u32> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(ASK_TIMEOUT))?;
    stream.set_read_timeout(Some(ASK_TIMEOUT))?;
    stream.write_all(&watch.encode())?;
    let mut buf = [0; MESSAGE_BYTES];
    stream.read_exact(&mut buf)?;
    let life = Life::decode(&buf)
        .ok()
        .filter(|l| l.identity == watch.identity && l.from == watch.to)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a Mu life message"))?;
    stream.set_read_timeout(None)?;
    Ok(life.life)
}

/// Blocks until the connection ends: the peer never writes on it, so anything read ends it too.
fn wait_for_end(stream: &mut TcpStream) {
    let mut byte = [0; 1];
    loop {
        match stream.read(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            _ => return,
        }
    }
}

/// A growing pause between failed attempts.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(BACKOFF_MIN)
    }

    fn wait(&mut self) {
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::time::Instant;

    const ID: Identity = Identity {
        layout_version: 1,
        config_hash: 0x0123_4567_89AB_CDEF,
    };

    /// A stand-in for replica 0's process in life `life`: its listener answers `answers`
    /// watches, then closes, as an exiting process's does; the kept streams close when the test
    /// drops them.
    fn serve(listener: TcpListener, kept: Arc<Kept>, life: u32, answers: usize) {
        std::thread::spawn(move || {
            for stream in listener.incoming().take(answers) {
                let Ok(mut stream) = stream else { return };
                let mut buf = [0; MESSAGE_BYTES];
                if stream.read_exact(&mut buf).is_ok() {
                    let watch = Watch::decode(&buf).unwrap();
                    kept.answer(stream, &watch, ID, 0, life).unwrap();
                }
            }
        });
    }

    fn until(what: &str, done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn watcher(address: SocketAddr) -> Arc<Deaths> {
        let deaths = Arc::new(Deaths::new(2));
        let watching = deaths.clone();
        let watch = Watch {
            identity: ID,
            from: 1,
            to: 0,
        };
        std::thread::spawn(move || watch_forever(address, watch, &watching));
        deaths
    }

    fn kept_count(kept: &Kept) -> usize {
        kept.streams.lock().unwrap().iter().flatten().count()
    }

    #[test]
    fn a_dropped_connection_is_not_a_death() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let kept = Arc::new(Kept::new(2));
        serve(listener, kept.clone(), 7, 2);
        let deaths = watcher(address);
        until("the watch is kept", || kept_count(&kept) == 1);
        // The network drops the connection; the listener still answers for life 7.
        kept.streams.lock().unwrap()[1] = None;
        until("the watcher asks again", || kept_count(&kept) == 1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(deaths.ended(0), None, "life 7 still answers");
        assert_eq!(deaths.ended(1), None);
    }

    #[test]
    fn an_ended_process_is_reported_with_its_life_and_its_successor_is_not() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let first = Arc::new(Kept::new(2));
        serve(listener, first.clone(), 7, 1);
        let deaths = watcher(address);
        until("the watch is kept", || kept_count(&first) == 1);
        // Its listener closed after the one answer; now its kept stream closes too.
        first.streams.lock().unwrap()[1] = None;
        until("life 7 reported ended", || deaths.ended(0) == Some(7));
        // A successor listens at the same address: watched, and life 7 stays the one reported.
        let second = Arc::new(Kept::new(2));
        serve(TcpListener::bind(address).unwrap(), second.clone(), 8, 1);
        until("the successor is watched", || kept_count(&second) == 1);
        assert_eq!(deaths.ended(0), Some(7));
    }

    #[test]
    fn a_watch_of_another_cluster_or_replica_is_not_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let kept = Kept::new(2);
        let stranger = Identity {
            config_hash: 1,
            ..ID
        };
        for (identity, from, to) in [(stranger, 1, 0), (ID, 1, 1), (ID, 0, 0), (ID, 5, 0)] {
            let mut client = TcpStream::connect(address).unwrap();
            let (stream, _) = listener.accept().unwrap();
            let watch = Watch { identity, from, to };
            kept.answer(stream, &watch, ID, 0, 7).unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).unwrap();
            assert!(answer.is_empty(), "{watch:?} was answered");
        }
        assert_eq!(kept_count(&kept), 0);
    }
}
