//! Total little-endian encoding helpers: a [`Writer`] that appends and a [`Reader`] whose every
//! read is bounds-checked, so decoding untrusted bytes yields a value or an error, never a panic.

use crate::path::PathError;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended in the middle of a value.
    #[error("input truncated: needed {needed} more bytes at offset {at}")]
    Truncated {
        /// Offset of the read that failed.
        at: usize,
        /// Bytes missing.
        needed: usize,
    },
    /// A varint ran past 10 bytes or overflowed 64 bits.
    #[error("malformed varint at offset {at}")]
    Varint {
        /// Offset of the varint.
        at: usize,
    },
    /// A length prefix exceeded its bound.
    #[error("length {len} at offset {at} exceeds the limit of {max}")]
    TooLong {
        /// Offset of the length.
        at: usize,
        /// The length read.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A path failed validation.
    #[error("invalid path: {0}")]
    Path(PathError),
    /// A structural rule was broken.
    #[error("invalid data: {0}")]
    Invalid(&'static str),
}

/// Appends encoded values to a byte vector.
#[derive(Default, Debug)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// A writer that appends to `buf`.
    pub fn with_buf(buf: Vec<u8>) -> Self {
        Writer { buf }
    }
    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// Four bytes, little-endian.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Eight bytes, little-endian.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// LEB128 unsigned varint (1–10 bytes).
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
    /// A varint length followed by the bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }
    /// Raw bytes with no length.
    pub fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// The encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
    /// The encoded bytes so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }
}

/// Reads encoded values from a byte slice; every method is total.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    /// Current offset.
    pub fn pos(&self) -> usize {
        self.pos
    }
    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
    /// Takes `n` raw bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let rest = &self.buf[self.pos.min(self.buf.len())..];
        if rest.len() < n {
            return Err(DecodeError::Truncated {
                at: self.pos,
                needed: n - rest.len(),
            });
        }
        self.pos += n;
        Ok(&rest[..n])
    }
    /// One byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    /// Four bytes, little-endian.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// Eight bytes, little-endian.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    /// LEB128 unsigned varint.
    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        let at = self.pos;
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            let part = (b & 0x7f) as u64;
            if i == 9 && part > 1 {
                return Err(DecodeError::Varint { at });
            }
            v |= part << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Varint { at })
    }
    /// A varint length (at most `max`) followed by that many bytes.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let at = self.pos;
        let len = self.varint()?;
        if len > max as u64 {
            return Err(DecodeError::TooLong { at, len, max });
        }
        self.take(len as usize)
    }
    /// A varint count bounded by `max`.
    pub fn count(&mut self, max: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.varint()?;
        if n > max as u64 {
            return Err(DecodeError::TooLong { at, len: n, max });
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_roundtrips(v in any::<u64>()) {
            let mut w = Writer::default();
            w.varint(v);
            let b = w.into_bytes();
            let mut r = Reader::new(&b);
            prop_assert_eq!(r.varint().unwrap(), v);
            prop_assert!(r.is_empty());
        }

        #[test]
        fn reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&bytes);
            while r.varint().is_ok() {}
            let mut r = Reader::new(&bytes);
            let _ = r.bytes(16);
            let _ = r.u64();
            let _ = r.u32();
        }
    }

    #[test]
    fn overlong_varint_is_refused() {
        let b = [0xffu8; 11];
        assert_eq!(Reader::new(&b).varint(), Err(DecodeError::Varint { at: 0 }));
        let b = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(Reader::new(&b).varint(), Err(DecodeError::Varint { at: 0 }));
    }
}
