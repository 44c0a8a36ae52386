//! Every decoder of peer-written bytes, fed random and mutated input: a typed rejection, never a
//! panic, and a mutated valid input never passes as valid unless the mutation is in bytes the
//! format does not cover.

use crate::config::Config;
use crate::layout::{Layout, HEADER_BYTES};
use crate::log::{decode_commit_for_tests, encode_commit};
use crate::record;
use crate::slot::{self, origin, Acceptance, SlotHeader, ACCEPTANCE_AT, SLOT_HEADER_BYTES};
use crate::wrid::WrId;

struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

/// Rounds of a fuzz loop: all of them natively, a hundredth under Miri (which interprets every
/// instruction: the full loops take minutes there).
fn rounds(native: usize) -> usize {
    if cfg!(miri) {
        native / 100
    } else {
        native
    }
}

#[test]
fn random_slots_never_open() {
    let mut rng = Bytes(0x5EED);
    let mut buf = [0u8; 512];
    for round in 0..rounds(20_000) {
        let size = [128usize, 192, 256, 512][round % 4];
        rng.fill(&mut buf[..size]);
        if round % 3 == 0 {
            // Plausible fragment fields, random everything else.
            buf[38] = 1;
            buf[39] = 0;
            buf[36] = 0;
            buf[37] = 0;
            buf[32..36].copy_from_slice(&8u32.to_le_bytes());
        }
        assert!(slot::open(&buf[..size], rng.next() % 1000).is_err());
    }
}

#[test]
fn mutated_slots_never_open_as_something_else() {
    let mut rng = Bytes(0xF00D);
    let payload = [0xABu8; 40];
    for round in 0..rounds(5_000) as u64 {
        let header = SlotHeader {
            position: round,
            chain_prev: rng.next(),
            origin: origin(1, round),
            entry_len: payload.len() as u32,
            frag_index: 0,
            frag_count: 1,
        };
        let mut buf = [0u8; 128];
        let acceptance = Acceptance {
            ballot: 8 * round + 1,
            commit: round,
        };
        header.seal(&payload, acceptance, &mut buf);
        buf[SLOT_HEADER_BYTES as usize..][..payload.len()].copy_from_slice(&payload);
        let covered = SLOT_HEADER_BYTES as usize + payload.len();
        let at = (rng.next() as usize) % covered;
        let flip = 1 + (rng.next() as u8 % 255);
        buf[at] ^= flip;
        let opened = slot::open(&buf, round);
        if (ACCEPTANCE_AT as usize..SLOT_HEADER_BYTES as usize).contains(&at) {
            // The value stands; only the ballot of this copy is lost.
            let opened = opened.expect("a flip in the acceptance record keeps the value");
            assert_eq!(opened.accepted, None, "a flip at {at} passed");
        } else if let Ok(opened) = opened {
            // A flip in the linked header words yields a chain nobody wrote: nothing vouches
            // for it, and nothing links to it.
            assert!(
                (16..ACCEPTANCE_AT as usize).contains(&at),
                "a flip at {at} passed"
            );
            assert_ne!(
                opened.chain,
                header.chain(&payload),
                "a flip at {at} kept the chain"
            );
            assert_eq!(opened.accepted, None, "a flip at {at} kept the acceptance");
        }
    }
}

#[test]
fn random_records_headers_commits_and_ids_are_rejected() {
    let mut rng = Bytes(0xBEEF);
    let config = Config::new(3);
    let mut bytes = [0u8; HEADER_BYTES as usize];
    for _ in 0..rounds(20_000) {
        rng.fill(&mut bytes);
        let offset = (rng.next() % 4096) as u32 & !7;
        assert_eq!(record::decode(offset, &bytes[..16]), None);
        assert!(Layout::check_header(&config, &bytes).is_err());
        assert!(decode_commit_for_tests(offset, &bytes[..32]).is_none());
        let _ = WrId::decode(rng.next()); // Any outcome but a panic.
        assert!(record::decode(offset, &bytes[..(rng.next() % 16) as usize]).is_none());
    }
}

#[test]
fn commit_records_round_trip_and_reject_flips() {
    let mut rng = Bytes(0xC0);
    for _ in 0..rounds(2_000) {
        let (offset, commit, chain) = (64 * (rng.next() % 100) as u32, rng.next(), rng.next());
        let mut bytes = encode_commit(offset, commit, chain);
        assert_eq!(
            decode_commit_for_tests(offset, &bytes),
            Some((commit, chain))
        );
        let at = (rng.next() % 24) as usize;
        bytes[at] ^= 1 << (rng.next() % 8);
        assert_eq!(decode_commit_for_tests(offset, &bytes), None);
    }
}
