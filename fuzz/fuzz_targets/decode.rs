//! Every decoder of untrusted bytes must return a value or an error, never panic:
//! records, digests, journal replay, snapshots and sync messages. The first byte picks the
//! decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wcfs_core::codec::Reader;
use std::sync::OnceLock;

use wcfs_core::webgen::WebPaths;
use wcfs_core::{Digest, Op, Record, ReplicaId, Table, WPath, journal, snapshot};

/// A small valid snapshot that mode 4 damages and re-checksums, so the structural checks see
/// the damage (random bytes almost never pass the CRC).
fn sample() -> &'static [u8] {
    static S: OnceLock<Vec<u8>> = OnceLock::new();
    S.get_or_init(|| {
        let g = WebPaths::new(3);
        let mut t = Table::new(ReplicaId(1), 2);
        for i in 0..200 {
            let p = WPath::new(g.path(i).as_bytes()).expect("valid");
            let op = if i % 9 == 0 { Op::Forget } else { Op::MarkRw };
            t.propose(&p, op).expect("propose");
        }
        snapshot::encode(&t)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 6 {
        0 => {
            let mut r = Reader::new(rest);
            while Record::decode(&mut r).is_ok() {}
        }
        1 => {
            let _ = Digest::decode(&mut Reader::new(rest));
        }
        2 => {
            let _ = journal::replay(rest, ReplicaId(1));
        }
        5 => {
            if let Ok(m) = wcfs_core::node::Message::decode(rest) {
                // What decodes must re-encode to something that decodes the same.
                let again = wcfs_core::node::Message::decode(&m.encode());
                assert!(again.is_ok(), "re-encoded message does not decode");
            }
        }
        4 => {
            let mut b = sample().to_vec();
            let body = b.len() - 12;
            for pair in rest.chunks(5) {
                if pair.len() == 5 {
                    let at = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]) as usize % body;
                    b[at] ^= pair[4];
                }
            }
            let crc = crc32fast::hash(&b[..body]);
            b[body..body + 4].copy_from_slice(&crc.to_le_bytes());
            if let Ok(mut t) = snapshot::decode(&b) {
                let _ = t.records().count();
                let vv = t.version_vector();
                t.gc(&vv);
            }
        }
        _ => {
            if let Ok(t) = snapshot::decode(rest) {
                // A snapshot that decodes must be usable.
                let _ = t.records().count();
                let _ = t.digest();
            }
        }
    }
});
