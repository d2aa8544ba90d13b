//! Fuzzes what a connection from a listed load balancer starts with (`api::proxy`: the PROXY
//! protocol v2 header, read before the TLS handshake) and the address ranges of
//! `[api] proxy_protocol_from`.
//!
//! Invariants, beyond "never panics":
//! * `announced_len` of the fixed part is within 16–512 bytes, and only for the v2 signature;
//! * `parse` accepts only a whole header of exactly the announced length, with the signature and
//!   version 2; a `PROXY` command yields the source address and port found at the offsets of
//!   the specification (checked here independently), a `LOCAL` command none; a header rebuilt
//!   from an accepted source parses to the same source;
//! * `looks_like_header` is never true for a TLS record (first byte 20–24);
//! * an accepted address range displays as `address/prefix`, parses again to itself, and
//!   contains its own network address.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hcert_signer::api::proxy::{
    AddressRange, MAX_HEADER_LEN, SIGNATURE, announced_len, looks_like_header, parse,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| check(data));

fn check(data: &[u8]) {
    if let Some(fixed) = data.get(..16).and_then(|f| <&[u8; 16]>::try_from(f).ok()) {
        if let Ok(len) = announced_len(fixed) {
            assert!((16..=MAX_HEADER_LEN).contains(&len), "{len}");
            assert_eq!(fixed[..12], SIGNATURE);
            // The same header as its announced prefix of the input.
            if let Some(whole) = data.get(..len) {
                check_header(whole);
            }
        }
    }
    check_header(data);
    if data.first().is_some_and(|b| (20..=24).contains(b)) {
        assert!(!looks_like_header(data), "a TLS record taken for a PROXY header");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check_range(text);
    }
}

fn check_header(data: &[u8]) {
    let Ok(h) = parse(data) else { return };
    assert_eq!(h.len, data.len(), "accepted with a length other than the bytes given");
    assert_eq!(data[..12], SIGNATURE);
    assert_eq!(data[12] >> 4, 2, "version");
    let body = &data[16..];
    match (data[12] & 0x0f, h.source) {
        (0, None) => {}
        (1, Some(source)) => {
            let expected = match data[13] {
                0x11 => SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(body[0], body[1], body[2], body[3])),
                    u16::from_be_bytes([body[8], body[9]]),
                ),
                0x21 => {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(&body[..16]);
                    SocketAddr::new(
                        IpAddr::V6(Ipv6Addr::from(octets)),
                        u16::from_be_bytes([body[32], body[33]]),
                    )
                }
                other => panic!("a PROXY header of family {other:#x} accepted"),
            };
            assert_eq!(source, expected);
            assert_eq!(parse(&rebuild(source)).map(|h| h.source), Ok(Some(source)), "rebuilt header");
        }
        (cmd, source) => panic!("command {cmd} accepted with source {source:?}"),
    }
}

/// A minimal PROXY header (TCP, no TLVs) from `source`.
fn rebuild(source: SocketAddr) -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    match source {
        SocketAddr::V4(s) => {
            h.extend([0x21, 0x11, 0, 12]);
            h.extend(s.ip().octets());
            h.extend([0; 4]);
            h.extend(s.port().to_be_bytes());
            h.extend([0; 2]);
        }
        SocketAddr::V6(s) => {
            h.extend([0x21, 0x21, 0, 36]);
            h.extend(s.ip().octets());
            h.extend([0; 16]);
            h.extend(s.port().to_be_bytes());
            h.extend([0; 2]);
        }
    }
    h
}

fn check_range(text: &str) {
    let Ok(range) = text.parse::<AddressRange>() else { return };
    let shown = range.to_string();
    assert_eq!(shown.parse::<AddressRange>(), Ok(range), "{text:?} shown as {shown:?}");
    let (net, _) = shown.split_once('/').expect("address/prefix");
    let net: IpAddr = net.parse().expect("the network address");
    assert!(range.contains(net), "{shown} does not contain its own address");
}
