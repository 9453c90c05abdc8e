//! Reading and writing: little-endian integers, LEB128 varints, short strings, and bit-packed
//! fields, with every read bounds-checked so a hostile packet can only produce an error.

use super::NetError;

pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn with_capacity(n: usize) -> Writer {
        Writer {
            buf: Vec::with_capacity(n),
        }
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
    /// A string of at most 255 bytes (longer ones are cut at a character boundary).
    pub fn str(&mut self, s: &str) {
        let mut end = s.len().min(255);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u8(end as u8);
        self.buf.extend_from_slice(&s.as_bytes()[..end]);
    }
}

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }
    /// What is left, not consumed.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], NetError> {
        if self.remaining() < n {
            return Err(NetError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, NetError> {
        Ok(self.bytes(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, NetError> {
        Ok(u16::from_le_bytes(self.bytes(2)?.try_into().unwrap()))
    }
    pub fn u32(&mut self) -> Result<u32, NetError> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> Result<u64, NetError> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().unwrap()))
    }
    pub fn varint(&mut self) -> Result<u64, NetError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(NetError::Invalid("varint too long"))
    }
    pub fn str(&mut self) -> Result<String, NetError> {
        let n = self.u8()? as usize;
        let b = self.bytes(n)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| NetError::Invalid("string is not UTF-8"))
    }
}

/// Bits, least significant first, for the parts of a packet where whole bytes waste most of
/// what they carry (entity updates: a 6-bit field mask, small signed moves).
pub struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u64,
    n: u32,
}

impl<'a> BitWriter<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> BitWriter<'a> {
        BitWriter { out, acc: 0, n: 0 }
    }

    /// The low `bits` bits of `v` (at most 32).
    pub fn bits(&mut self, v: u32, bits: u32) {
        debug_assert!(bits <= 32);
        let v = if bits == 32 {
            u64::from(v)
        } else {
            u64::from(v) & ((1u64 << bits) - 1)
        };
        self.acc |= v << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    pub fn flag(&mut self, b: bool) {
        self.bits(u32::from(b), 1);
    }

    /// An unsigned value in groups of `chunk` bits, each followed by a "more" bit: small
    /// values (ids close to the previous one, counts) take `chunk + 1` bits.
    pub fn uvar(&mut self, mut v: u32, chunk: u32) {
        loop {
            let more = chunk < 32 && v >> chunk != 0;
            self.bits(v, chunk);
            self.flag(more);
            if !more {
                return;
            }
            v >>= chunk;
        }
    }

    /// A signed value in a size class of its zigzag form: `0` and 6 bits, `10` and 3, `110` and
    /// 11, `111` and 32 (the tags least significant bit first). The shortest tag goes to the
    /// class a move in whole units against a baseline a few ticks old falls in (up to 31 units,
    /// 7 bits in all); a nearly still body takes 5, a jump across the arena (a respawn) 14.
    pub fn svar(&mut self, v: i32) {
        let z = ((v << 1) ^ (v >> 31)) as u32;
        let (tag, tag_bits, width) = if z >> 3 == 0 {
            (0b01, 2, 3)
        } else if z >> 6 == 0 {
            (0b0, 1, 6)
        } else if z >> 11 == 0 {
            (0b011, 3, 11)
        } else {
            (0b111, 3, 32)
        };
        self.bits(tag, tag_bits);
        self.bits(z, width);
    }

    /// A signed value as its sign and its magnitude in `chunk`-bit groups ([`Self::uvar`]);
    /// a zero is never negative, so one value has one encoding.
    pub fn signed(&mut self, v: i32, chunk: u32) {
        self.flag(v < 0);
        self.uvar(v.unsigned_abs(), chunk);
    }

    /// Pads the last byte with zero bits.
    pub fn finish(self) {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
    }
}

/// Reads what a [`BitWriter`] wrote; every read is bounds-checked.
pub struct BitReader<'a> {
    buf: &'a [u8],
    /// Bits consumed.
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub fn new(buf: &'a [u8]) -> BitReader<'a> {
        BitReader { buf, pos: 0 }
    }

    pub fn bits(&mut self, bits: u32) -> Result<u32, NetError> {
        let bits = bits as usize;
        if self.pos + bits > self.buf.len() * 8 {
            return Err(NetError::Truncated);
        }
        let mut v = 0u64;
        let mut got = 0;
        while got < bits {
            let byte = self.buf[(self.pos + got) / 8];
            let off = (self.pos + got) % 8;
            let take = (8 - off).min(bits - got);
            let part = (u64::from(byte) >> off) & ((1u64 << take) - 1);
            v |= part << got;
            got += take;
        }
        self.pos += bits;
        Ok(v as u32)
    }

    pub fn flag(&mut self) -> Result<bool, NetError> {
        Ok(self.bits(1)? == 1)
    }

    pub fn uvar(&mut self, chunk: u32) -> Result<u32, NetError> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            v |= u64::from(self.bits(chunk)?) << shift;
            if v > u64::from(u32::MAX) {
                return Err(NetError::Invalid("variable-length value too large"));
            }
            if !self.flag()? {
                return Ok(v as u32);
            }
            shift += chunk;
            if shift >= 32 {
                return Err(NetError::Invalid("variable-length value too long"));
            }
        }
    }

    pub fn svar(&mut self) -> Result<i32, NetError> {
        let width = if !self.flag()? {
            6
        } else if !self.flag()? {
            3
        } else if !self.flag()? {
            11
        } else {
            32
        };
        let z = self.bits(width)?;
        Ok(((z >> 1) as i32) ^ -((z & 1) as i32))
    }

    pub fn signed(&mut self, chunk: u32) -> Result<i32, NetError> {
        let negative = self.flag()?;
        let magnitude = self.uvar(chunk)?;
        match (negative, magnitude) {
            (true, 0) => Err(NetError::Invalid("negative zero")),
            (false, m) => i32::try_from(m).map_err(|_| NetError::Invalid("signed value")),
            (true, m) => 0i32
                .checked_sub_unsigned(m)
                .ok_or(NetError::Invalid("signed value")),
        }
    }

    /// Bytes consumed, the last one partly; its unused bits must be zero (so one value has
    /// one encoding).
    pub fn finish(self) -> Result<usize, NetError> {
        let used = self.pos.div_ceil(8);
        if !self.pos.is_multiple_of(8) && self.buf[used - 1] >> (self.pos % 8) != 0 {
            return Err(NetError::Invalid("padding bits are not zero"));
        }
        Ok(used)
    }
}

#[cfg(test)]
mod bit_tests {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Item {
        Bits(u32, u32),
        Uvar(u32, u32),
        Svar(i32),
        Signed(i32, u32),
    }

    fn item() -> impl Strategy<Value = Item> {
        prop_oneof![
            (1u32..=32, any::<u32>())
                .prop_map(|(n, v)| Item::Bits(if n == 32 { v } else { v & ((1 << n) - 1) }, n)),
            (any::<u32>(), 1u32..=8).prop_map(|(v, c)| Item::Uvar(v, c)),
            (0u32..600).prop_map(|v| Item::Uvar(v, 4)),
            any::<i32>().prop_map(Item::Svar),
            (-400i32..400).prop_map(Item::Svar),
            (any::<i32>(), 1u32..=10).prop_map(|(v, c)| Item::Signed(v, c)),
            (-400i32..400, 1u32..=10).prop_map(|(v, c)| Item::Signed(v, c)),
        ]
    }

    proptest! {
        #[test]
        fn what_is_written_reads_back(items in proptest::collection::vec(item(), 0..40)) {
            let mut out = vec![0xAA];
            let mut w = BitWriter::new(&mut out);
            for it in &items {
                match *it {
                    Item::Bits(v, n) => w.bits(v, n),
                    Item::Uvar(v, c) => w.uvar(v, c),
                    Item::Svar(v) => w.svar(v),
                    Item::Signed(v, c) => w.signed(v, c),
                }
            }
            w.finish();
            let mut r = BitReader::new(&out[1..]);
            for it in &items {
                match *it {
                    Item::Bits(v, n) => prop_assert_eq!(r.bits(n).unwrap(), v),
                    Item::Uvar(v, c) => prop_assert_eq!(r.uvar(c).unwrap(), v),
                    Item::Svar(v) => prop_assert_eq!(r.svar().unwrap(), v),
                    Item::Signed(v, c) => prop_assert_eq!(r.signed(c).unwrap(), v),
                }
            }
            prop_assert_eq!(r.finish().unwrap(), out.len() - 1);
        }
    }

    #[test]
    fn small_values_take_few_bits_and_junk_is_refused() {
        let mut out = Vec::new();
        let mut w = BitWriter::new(&mut out);
        w.svar(15); // a move of 15 units: 1 + 6 bits
        w.svar(0); // 2 + 3
        w.uvar(3, 3); // 4
        w.finish();
        assert_eq!(out.len(), 2, "16 bits in 2 bytes");
        // Nonzero padding, a truncated value, an endless uvar.
        let mut r = BitReader::new(&[0xff]);
        r.bits(3).unwrap();
        assert!(r.finish().is_err());
        assert_eq!(BitReader::new(&[0x03]).bits(9), Err(NetError::Truncated));
        assert!(BitReader::new(&[0xff; 16]).uvar(4).is_err());
        // A negative zero (sign bit, then a zero magnitude) has a positive twin: refused.
        assert!(BitReader::new(&[0b01]).signed(4).is_err());
    }
}
