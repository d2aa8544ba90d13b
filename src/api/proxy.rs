//! The PROXY protocol v2 header a TCP-mode load balancer sends before the TLS handshake, so
//! that per-peer limits and logs see the real client, not the balancer; accepted only from the
//! addresses in `[api] proxy_protocol_from`.
//!
//! The parser is strict and small (the binary header of the HAProxy specification, section 2.2):
//! the 12-byte signature, version 2, the `LOCAL` or `PROXY` command, TCP over IPv4 or IPv6 (a
//! `LOCAL` header, the balancer's own health check, may carry any family), and at most
//! [`MAX_HEADER_LEN`] bytes in all, TLVs included and skipped. Anything else is refused.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part: signature, version/command, family/protocol, length.
const FIXED_LEN: usize = 16;
/// Largest header accepted (the fixed part and the addresses and TLVs after it). HAProxy sends
/// 28 bytes for IPv4 and 52 for IPv6 without TLVs; this leaves room for a few TLVs.
pub const MAX_HEADER_LEN: usize = 512;
/// Time a listed balancer has to send the whole header (it sends it at once, with the
/// connection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection's PROXY protocol header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// A listed balancer's connection does not start with the v2 signature.
    #[error("no PROXY protocol v2 header from a listed balancer")]
    Missing,
    /// A header from an address not in `proxy_protocol_from`.
    #[error("a PROXY protocol header from an address not in [api] proxy_protocol_from")]
    Unlisted,
    /// The header breaks the v2 format.
    #[error("malformed PROXY protocol v2 header: {0}")]
    Malformed(&'static str),
    /// The balancer did not send the whole header in time.
    #[error("the PROXY protocol header did not arrive within {}s", HEADER_TIMEOUT.as_secs())]
    Timeout,
    /// The connection failed or closed while the header was read.
    #[error("the connection closed before the PROXY protocol header was complete")]
    Closed,
}

impl ProxyError {
    /// A metric label (`hcert_connections_refused_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Missing => "proxy_header_missing",
            ProxyError::Unlisted => "proxy_header_unlisted",
            ProxyError::Malformed(_) => "proxy_header_malformed",
            ProxyError::Timeout => "proxy_header_timeout",
            ProxyError::Closed => "proxy_header_closed",
        }
    }
}

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes (the fixed part included): what to consume before TLS begins.
    pub len: usize,
    /// The client's address for a `PROXY` command; `None` for `LOCAL` (the balancer speaking
    /// for itself: the connection's own peer address stands).
    pub source: Option<SocketAddr>,
}

/// The length of the whole header announced by its fixed part, after checking that part.
pub fn announced_len(fixed: &[u8; FIXED_LEN]) -> Result<usize, ProxyError> {
    if fixed[..12] != SIGNATURE {
        return Err(ProxyError::Missing);
    }
    if fixed[12] >> 4 != 2 {
        return Err(ProxyError::Malformed("version is not 2"));
    }
    let len = FIXED_LEN + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_HEADER_LEN {
        return Err(ProxyError::Malformed("longer than 512 bytes"));
    }
    Ok(len)
}

/// Parses a complete header: `buf` is exactly the [`announced_len`] bytes.
pub fn parse(buf: &[u8]) -> Result<Header, ProxyError> {
    let fixed: &[u8; FIXED_LEN] =
        buf.get(..FIXED_LEN).and_then(|f| f.try_into().ok()).ok_or(ProxyError::Malformed("truncated"))?;
    let len = announced_len(fixed)?;
    if buf.len() != len {
        return Err(ProxyError::Malformed("length does not match the bytes given"));
    }
    let body = &buf[FIXED_LEN..];
    match fixed[12] & 0x0f {
        // LOCAL: addresses (if any) are to be ignored.
        0 => return Ok(Header { len, source: None }),
        1 => {}
        _ => return Err(ProxyError::Malformed("command is neither LOCAL nor PROXY")),
    }
    let source = match fixed[13] {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 => {
            let a = body.get(..12).ok_or(ProxyError::Malformed("too short for IPv4 addresses"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([a[8], a[9]]))
        }
        // TCP over IPv6.
        0x21 => {
            let a = body.get(..36).ok_or(ProxyError::Malformed("too short for IPv6 addresses"))?;
            let octets: [u8; 16] = a[..16].try_into().map_err(|_| ProxyError::Malformed("IPv6"))?;
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), u16::from_be_bytes([a[32], a[33]]))
        }
        _ => return Err(ProxyError::Malformed("a PROXY command must carry TCP over IPv4 or IPv6")),
    };
    Ok(Header { len, source: Some(source) })
}

/// Reads exactly one header from a listed balancer's connection (nothing of the TLS handshake
/// after it), within [`HEADER_TIMEOUT`].
pub async fn read_header<R: AsyncRead + Unpin>(io: &mut R) -> Result<Header, ProxyError> {
    read_header_within(io, HEADER_TIMEOUT).await
}

async fn read_header_within<R: AsyncRead + Unpin>(io: &mut R, limit: Duration) -> Result<Header, ProxyError> {
    let read = async {
        let mut buf = [0u8; MAX_HEADER_LEN];
        io.read_exact(&mut buf[..FIXED_LEN]).await.map_err(|_| ProxyError::Closed)?;
        let fixed: [u8; FIXED_LEN] = buf[..FIXED_LEN].try_into().map_err(|_| ProxyError::Closed)?;
        let len = announced_len(&fixed)?;
        io.read_exact(&mut buf[FIXED_LEN..len]).await.map_err(|_| ProxyError::Closed)?;
        parse(&buf[..len])
    };
    tokio::time::timeout(limit, read).await.map_err(|_| ProxyError::Timeout)?
}

/// Whether the first bytes a peer sent start a PROXY protocol header (v2's signature, or v1's
/// `PROXY `), rather than a TLS record.
pub fn looks_like_header(first: &[u8]) -> bool {
    let starts = |sig: &[u8]| {
        let k = first.len().min(sig.len());
        k > 0 && first[..k] == sig[..k]
    };
    starts(&SIGNATURE) || starts(b"PROXY ")
}

/// An address or a CIDR range, as written in `[api] proxy_protocol_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct AddressRange {
    net: IpAddr,
    prefix: u8,
}

impl AddressRange {
    /// Whether `ip` is in the range. Both sides are compared as IPv6, IPv4 as its mapped form
    /// (`::ffff:a.b.c.d`), so `10.0.0.0/8` and `::ffff:10.0.0.0/104` are the same range and
    /// each contains `10.1.2.3` however the socket reports it.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let mask = u128::MAX.checked_shl(128 - u32::from(self.wide_prefix())).unwrap_or(0);
        wide(self.net) & mask == wide(ip) & mask
    }

    /// The prefix length in the IPv6 form of the range.
    fn wide_prefix(&self) -> u8 {
        if self.net.is_ipv4() { self.prefix + 96 } else { self.prefix }
    }
}

/// An address as the 128 bits of its IPv6 form (IPv4 mapped).
fn wide(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl FromStr for AddressRange {
    type Err = String;

    /// `10.0.0.1`, `10.0.0.0/8`, `fd00::/8`: the address bits past the prefix must be zero, so a
    /// range means what it says (`10.0.0.1/8` is refused).
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not an IP address or a CIDR range"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0–{max}")),
            },
        };
        let range = AddressRange { net, prefix };
        if range.host_bits_set() {
            return Err(format!("{s:?}: address bits are set past the /{prefix} prefix"));
        }
        Ok(range)
    }
}

impl AddressRange {
    fn host_bits_set(&self) -> bool {
        let mask = u128::MAX.checked_shl(128 - u32::from(self.wide_prefix())).unwrap_or(0);
        wide(self.net) & !mask != 0
    }
}

impl TryFrom<String> for AddressRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// The balancers allowed to send a PROXY protocol header.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<AddressRange>);

impl TrustedProxies {
    /// The ranges of `[api] proxy_protocol_from`.
    pub fn new(ranges: &[AddressRange]) -> Self {
        TrustedProxies(ranges.to_vec())
    }

    /// Whether a connection from `ip` must start with a header (and only then may).
    pub fn listed(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|r| r.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_header(cmd: u8, src: [u8; 4], port: u16, tlv: &[u8]) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.extend([0x20 | cmd, 0x11]);
        h.extend(u16::try_from(12 + tlv.len()).unwrap().to_be_bytes());
        h.extend(src);
        h.extend([127, 0, 0, 1]);
        h.extend(port.to_be_bytes());
        h.extend(8443u16.to_be_bytes());
        h.extend(tlv);
        h
    }

    #[test]
    fn parses_proxy_and_local_over_ipv4_and_ipv6() {
        let h = v4_header(1, [127, 0, 0, 2], 40000, &[]);
        assert_eq!(parse(&h), Ok(Header { len: 28, source: Some("127.0.0.2:40000".parse().unwrap()) }));
        // TLVs are skipped, their bytes consumed.
        let h = v4_header(1, [10, 1, 2, 3], 1, &[0x04, 0, 1, 0]);
        assert_eq!(parse(&h).unwrap().len, 32);
        assert_eq!(parse(&v4_header(0, [0; 4], 0, &[])), Ok(Header { len: 28, source: None }));
        let mut h = SIGNATURE.to_vec();
        h.extend([0x21, 0x21, 0, 36]);
        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        h.extend(src.octets());
        h.extend([0; 16]);
        h.extend(443u16.to_be_bytes());
        h.extend(8443u16.to_be_bytes());
        assert_eq!(parse(&h).unwrap().source, Some("[2001:db8::7]:443".parse().unwrap()));
        // LOCAL with no addresses at all (family UNSPEC).
        let mut local = SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local), Ok(Header { len: 16, source: None }));
    }

    #[test]
    fn refuses_everything_else() {
        let good = v4_header(1, [127, 0, 0, 2], 40000, &[]);
        let mut tls = vec![0x16, 3, 1, 0, 0xc8];
        tls.extend([0; 11]);
        assert_eq!(announced_len(tls[..16].try_into().unwrap()), Err(ProxyError::Missing));
        let edit = |i: usize, v: u8| {
            let mut h = good.clone();
            h[i] = v;
            parse(&h)
        };
        assert_eq!(edit(12, 0x11), Err(ProxyError::Malformed("version is not 2")));
        assert!(matches!(edit(12, 0x22), Err(ProxyError::Malformed(m)) if m.contains("command")));
        // UDP, UNIX, UNSPEC with PROXY.
        for fam in [0x12, 0x31, 0x00, 0x22] {
            assert!(matches!(edit(13, fam), Err(ProxyError::Malformed(_))), "{fam:#x}");
        }
        // Too short for the family's addresses; lengths that disagree; too long.
        let mut short = good.clone();
        short[15] = 8;
        short.truncate(24);
        assert!(matches!(parse(&short), Err(ProxyError::Malformed(m)) if m.contains("too short")));
        assert!(parse(&good[..27]).is_err());
        let mut long = good.clone();
        long[14] = 2;
        assert_eq!(parse(&long), Err(ProxyError::Malformed("longer than 512 bytes")));
        assert!(parse(&good[..10]).is_err());
    }

    #[tokio::test]
    async fn reads_exactly_the_header_and_times_out() {
        let mut bytes = v4_header(1, [127, 0, 0, 3], 5, &[]);
        bytes.extend([0x16, 3, 1]);
        let mut r = &bytes[..];
        assert_eq!(read_header(&mut r).await.unwrap().source, Some("127.0.0.3:5".parse().unwrap()));
        assert_eq!(r, &[0x16, 3, 1], "the TLS bytes after it are left unread");
        let mut cut = &bytes[..20];
        assert_eq!(read_header(&mut cut).await, Err(ProxyError::Closed));
        let (mut a, _b) = tokio::io::duplex(64);
        let limit = Duration::from_millis(50);
        assert_eq!(read_header_within(&mut a, limit).await, Err(ProxyError::Timeout));
    }

    #[test]
    fn sniffs_headers_of_either_version() {
        assert!(looks_like_header(&SIGNATURE[..5]));
        assert!(looks_like_header(b"PROXY TCP4 1.2.3.4"));
        assert!(looks_like_header(b"\r"));
        assert!(!looks_like_header(&[0x16, 3, 1]));
        assert!(!looks_like_header(b""));
    }

    #[test]
    fn address_ranges() {
        let r = |s: &str| s.parse::<AddressRange>();
        let ten = r("10.0.0.0/8").unwrap();
        assert!(ten.contains("10.200.1.1".parse().unwrap()));
        assert!(ten.contains("::ffff:10.0.0.1".parse().unwrap()), "IPv4-mapped");
        assert!(!ten.contains("11.0.0.1".parse().unwrap()));
        let one = r("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()) && !one.contains("127.0.0.2".parse().unwrap()));
        assert!(r("0.0.0.0/0").unwrap().contains("192.0.2.1".parse().unwrap()));
        assert!(r("fd00::/8").unwrap().contains("fd12::1".parse().unwrap()));
        assert!(!r("fd00::/8").unwrap().contains("10.0.0.1".parse().unwrap()));
        // A range written in the IPv4-mapped form holds the IPv4 addresses it maps (found by
        // the proxy_header fuzz target: `::ffff:ff:f` did not contain itself).
        let mapped = r("::ffff:10.0.0.0/104").unwrap();
        assert!(
            mapped.contains("10.9.9.9".parse().unwrap()) && !mapped.contains("11.0.0.1".parse().unwrap())
        );
        assert!(r("::ffff:ff:f").unwrap().contains("::ffff:ff:f".parse().unwrap()));
        assert!(r("::/0").unwrap().contains("192.0.2.1".parse().unwrap()), "everything");
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/+8", "host", "10.0.0", "::1/129", ""]
        {
            assert!(r(bad).is_err(), "{bad}");
        }
        let proxies = TrustedProxies::new(&[one, ten]);
        assert!(proxies.listed("10.1.1.1".parse().unwrap()) && !proxies.listed("127.0.0.2".parse().unwrap()));
        assert!(!TrustedProxies::default().listed("127.0.0.1".parse().unwrap()));
    }
}
