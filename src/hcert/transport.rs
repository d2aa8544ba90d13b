//! The QR transport of a signed HCERT: zlib → Base45 → `HC1:` prefix, and back.
//!
//! Encoding is on the signing hot path, so [`Hc1Encoder`] keeps one zlib compressor and its
//! buffers and resets them per record instead of allocating a new deflate state (≈ 300 KiB of
//! tables) every time.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::Error;

/// The context identifier that opens every HCERT QR code (HCERT §4.4).
pub const PREFIX: &str = "HC1:";

/// The zlib level used by default, chosen by measurement (`cargo bench --bench encode` prints
/// the table): with the zlib-rs backend, level 1 output is within 1.3 % of level 9's size on
/// DCC payloads at a sixth of the time; levels 2–8 buy 0.5 % for five times the cost.
pub const DEFAULT_LEVEL: u32 = 1;

/// Largest COSE message [`decode`] will inflate to: a QR code holds at most 4,296 alphanumeric
/// characters, so anything bigger is not an HCERT and refusing it bounds memory on hostile input.
pub const MAX_INFLATED: usize = 64 * 1024;

/// Turns COSE_Sign1 bytes into `HC1:` strings, reusing its compressor between records.
pub struct Hc1Encoder {
    compress: Compress,
    deflated: Vec<u8>,
}

impl Default for Hc1Encoder {
    fn default() -> Self {
        Self::new(DEFAULT_LEVEL)
    }
}

impl Hc1Encoder {
    /// An encoder compressing at zlib `level` (0–9).
    pub fn new(level: u32) -> Self {
        Self {
            compress: Compress::new(Compression::new(level.min(9)), true),
            deflated: Vec::with_capacity(1024),
        }
    }

    /// The zlib stream of `cose` (exposed for tests and the encoding benchmark).
    pub fn deflate(&mut self, cose: &[u8]) -> Result<&[u8], Error> {
        self.compress.reset();
        self.deflated.clear();
        // zlib's worst case is the input plus 5 bytes per 16 KiB block plus the 6-byte wrapper.
        self.deflated.reserve(cose.len() + cose.len() / 16_000 * 5 + 64);
        loop {
            // total_in counts from the last reset, so it is an offset into this record's input.
            let consumed = (self.compress.total_in() as usize).min(cose.len());
            let status = self
                .compress
                .compress_vec(&cose[consumed..], &mut self.deflated, FlushCompress::Finish)
                .map_err(|e| Error::Zlib(e.to_string()))?;
            match status {
                Status::StreamEnd => return Ok(&self.deflated),
                // Out of room: grow and go on; the compressor keeps its place in the input.
                Status::Ok | Status::BufError => self.deflated.reserve(1024),
            }
        }
    }

    /// The `HC1:` string for the COSE_Sign1 bytes `cose`.
    pub fn encode(&mut self, cose: &[u8]) -> Result<String, Error> {
        let deflated = self.deflate(cose)?;
        let mut out = String::with_capacity(PREFIX.len() + deflated.len() * 3 / 2 + 2);
        out.push_str(PREFIX);
        out.push_str(&base45::encode(deflated));
        Ok(out)
    }
}

/// Strips the `HC1:` context identifier.
pub fn unprefix(hc1: &str) -> Result<&str, Error> {
    hc1.strip_prefix(PREFIX).ok_or(Error::Prefix)
}

/// Decodes Base45 text.
pub fn base45_decode(text: &str) -> Result<Vec<u8>, Error> {
    base45::decode(text).map_err(|e| Error::Base45(e.to_string()))
}

/// Inflates a zlib stream, refusing output larger than [`MAX_INFLATED`] and trailing garbage.
pub fn inflate(zlib: &[u8]) -> Result<Vec<u8>, Error> {
    let mut d = Decompress::new(true);
    let mut out = Vec::with_capacity((zlib.len() * 3).min(MAX_INFLATED));
    loop {
        let consumed = d.total_in() as usize;
        let status = d
            .decompress_vec(&zlib[consumed.min(zlib.len())..], &mut out, FlushDecompress::Finish)
            .map_err(|e| Error::Zlib(e.to_string()))?;
        match status {
            Status::StreamEnd => break,
            _ if out.len() >= MAX_INFLATED => {
                return Err(Error::Zlib(format!("inflates to more than {MAX_INFLATED} bytes")));
            }
            _ if out.len() == out.capacity() => out.reserve(4096.min(MAX_INFLATED - out.len())),
            // No room problem and no progress: the input ended before the stream did.
            _ if d.total_in() as usize == consumed => {
                return Err(Error::Zlib("truncated stream".into()));
            }
            _ => {}
        }
    }
    if (d.total_in() as usize) != zlib.len() {
        return Err(Error::Zlib("data after the end of the stream".into()));
    }
    Ok(out)
}

/// `HC1:` string → COSE bytes: unprefix, Base45, inflate.
pub fn decode(hc1: &str) -> Result<Vec<u8>, Error> {
    inflate(&base45_decode(unprefix(hc1.trim_end())?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reuse() {
        let mut enc = Hc1Encoder::default();
        for n in [0usize, 1, 100, 1000, 5000] {
            let input: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
            let hc1 = enc.encode(&input).unwrap();
            assert!(hc1.starts_with("HC1:"));
            assert_eq!(decode(&hc1).unwrap(), input, "length {n}");
        }
    }

    #[test]
    fn incompressible_input_grows_buffer() {
        let mut enc = Hc1Encoder::new(9);
        // A xorshift stream does not compress, so deflate must grow past its first reservation.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let input: Vec<u8> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(inflate(enc.deflate(&input).unwrap()).unwrap(), input);
    }

    #[test]
    fn rejects_bad_transport() {
        assert!(matches!(decode("HC2:6BFOXN"), Err(Error::Prefix)));
        assert!(matches!(decode("HC1:@@@"), Err(Error::Base45(_))));
        // Valid Base45 of bytes that are not zlib.
        let not_zlib = format!("HC1:{}", base45::encode(b"plainly not zlib"));
        assert!(matches!(decode(&not_zlib), Err(Error::Zlib(_))));
        let mut enc = Hc1Encoder::default();
        let z = enc.deflate(b"hello hello hello").unwrap().to_vec();
        assert!(matches!(inflate(&z[..z.len() - 3]), Err(Error::Zlib(_))));
        let mut trailing = z.clone();
        trailing.extend_from_slice(b"xx");
        assert!(matches!(inflate(&trailing), Err(Error::Zlib(_))));
    }

    #[test]
    fn refuses_zlib_bombs() {
        let mut enc = Hc1Encoder::new(9);
        let bomb = enc.deflate(&vec![0u8; MAX_INFLATED * 4]).unwrap().to_vec();
        assert!(matches!(inflate(&bomb), Err(Error::Zlib(_))));
    }
}
