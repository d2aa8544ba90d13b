//! Idempotency keys that mean it: a key is bound to the request it was first used with, and
//! outlives its batch as a tombstone for the retention period. Backend-agnostic: the request
//! hash and the stored entry's encoding are the same whatever holds them.

use sha2::{Digest, Sha256};

use super::error::StoreError;
use super::record::NewRecord;

/// Version byte of an entry.
const VERSION: u8 = 1;
const LIVE: u8 = 0;
const TOMBSTONE: u8 = 1;

/// What an idempotency key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A stored batch (its seq) and the hash of the request that made it.
    Live {
        /// The batch's sequence number.
        seq: u64,
        /// [`request_hash`] of its request.
        request: [u8; 32],
    },
    /// A purged batch: its id, and when it was purged (the tombstone expires a retention
    /// period later). No record content.
    Tombstone {
        /// The purged batch's id.
        batch_id: [u8; 16],
        /// When it was purged, Unix seconds.
        deleted_at: i64,
    },
}

impl Entry {
    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(42);
        v.push(VERSION);
        match self {
            Self::Live { seq, request } => {
                v.push(LIVE);
                v.extend_from_slice(&seq.to_be_bytes());
                v.extend_from_slice(request);
            }
            Self::Tombstone { batch_id, deleted_at } => {
                v.push(TOMBSTONE);
                v.extend_from_slice(batch_id);
                v.extend_from_slice(&deleted_at.to_be_bytes());
            }
        }
        v
    }

    /// Reads a stored entry.
    pub fn decode(b: &[u8]) -> Result<Self, StoreError> {
        let bad = || StoreError::Corrupt(format!("idempotency entry of {} bytes", b.len()));
        match b {
            [VERSION, LIVE, rest @ ..] if rest.len() == 40 => {
                let (seq, request) = rest.split_at(8);
                Ok(Self::Live {
                    seq: u64::from_be_bytes(seq.try_into().map_err(|_| bad())?),
                    request: request.try_into().map_err(|_| bad())?,
                })
            }
            [VERSION, TOMBSTONE, rest @ ..] if rest.len() == 24 => {
                let (id, at) = rest.split_at(16);
                Ok(Self::Tombstone {
                    batch_id: id.try_into().map_err(|_| bad())?,
                    deleted_at: i64::from_be_bytes(at.try_into().map_err(|_| bad())?),
                })
            }
            _ => Err(bad()),
        }
    }
}

/// Where an idempotency key is stored ([`storage_key`]) and its request's hash ([`request_hash`]).
pub(crate) type Keyed = ([u8; 32], [u8; 32]);

/// A submission checked before either backend stores it: its record count, and with an
/// idempotency key, where the key is stored and the request's hash.
pub(crate) fn admit(
    issuer: &str,
    key: Option<&str>,
    records: &[NewRecord<'_>],
) -> Result<(u32, Option<Keyed>), StoreError> {
    if records.is_empty() {
        return Err(StoreError::Invalid("a batch needs at least one record"));
    }
    let total =
        u32::try_from(records.len()).map_err(|_| StoreError::Invalid("too many records in one batch"))?;
    let idem = match key {
        Some(k) => Some((storage_key(issuer, k)?, request_hash(records))),
        None => None,
    };
    Ok((total, idem))
}

/// Where an issuer's key is stored: a hash of the (length-prefixed) issuer and key, so no two
/// pairs collide and the key, which the issuer chose and could hold anything, is not on disk.
pub fn storage_key(issuer: &str, key: &str) -> Result<[u8; 32], StoreError> {
    let len =
        u16::try_from(issuer.len()).map_err(|_| StoreError::Invalid("issuer id longer than 65535 bytes"))?;
    if key.len() > usize::from(u16::MAX) {
        return Err(StoreError::Invalid("idempotency key longer than 65535 bytes"));
    }
    let mut h = Sha256::new();
    h.update(b"hcert-idempotency/1");
    h.update(len.to_be_bytes());
    h.update(issuer.as_bytes());
    h.update(key.as_bytes());
    Ok(h.finalize().into())
}

/// The hash of a request as parsed: SHA-256 over each record's `ref` and its DCC in canonical
/// JSON (object keys sorted, no whitespace, strings re-escaped the one way serde_json writes
/// them, numbers as parsed), in record order. So whitespace, key order and escaping (`"é"` vs
/// `"\u00e9"`) do not change it; any change of a value, a ref, or the records' order does.
pub fn request_hash(records: &[NewRecord<'_>]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"hcert-request/1");
    h.update((records.len() as u64).to_be_bytes());
    let mut buf = Vec::new();
    for r in records {
        h.update((r.r#ref.len() as u64).to_be_bytes());
        h.update(r.r#ref.as_bytes());
        buf.clear();
        match serde_json::from_slice::<serde_json::Value>(r.dcc_json) {
            Ok(v) => {
                buf.push(b'J');
                canonical(&v, &mut buf);
            }
            // The API only passes JSON; anything else is hashed as it is.
            Err(_) => {
                buf.push(b'R');
                buf.extend_from_slice(r.dcc_json);
            }
        }
        h.update((buf.len() as u64).to_be_bytes());
        h.update(&buf);
    }
    h.finalize().into()
}

/// Canonical JSON: sorted object keys whatever map type serde_json was built with.
fn canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Writing a string into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                canonical(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out);
            }
            out.push(b']');
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(records: &[(&str, &str)]) -> [u8; 32] {
        let r: Vec<NewRecord<'_>> =
            records.iter().map(|(r, d)| NewRecord { r#ref: r, dcc_json: d.as_bytes() }).collect();
        request_hash(&r)
    }

    #[test]
    fn the_request_hash_ignores_form_and_sees_content() {
        let a = hash(&[("p-1", r#"{"nam":{"fn":"Lê"},"dob":"1990-01-02","v":[{"dn":1}]}"#)]);
        let same = hash(&[(
            "p-1",
            "{ \"v\" : [ {\"dn\":1} ],\n \"dob\":\"1990-01-02\", \"nam\":{\"fn\":\"L\\u00ea\"} }",
        )]);
        assert_eq!(a, same, "whitespace, key order and escaping do not matter");
        assert_ne!(
            a,
            hash(&[("p-1", r#"{"nam":{"fn":"Lê"},"dob":"1990-01-03","v":[{"dn":1}]}"#)]),
            "a value"
        );
        assert_ne!(a, hash(&[("p-2", r#"{"nam":{"fn":"Lê"},"dob":"1990-01-02","v":[{"dn":1}]}"#)]), "a ref");
        assert_ne!(
            a,
            hash(&[("p-1", r#"{"nam":{"fn":"Lê"},"dob":"1990-01-02","v":[{"dn":2}]}"#)]),
            "a number"
        );
        let two = hash(&[("a", "{}"), ("b", "{}")]);
        assert_ne!(two, hash(&[("b", "{}"), ("a", "{}")]), "record order");
        assert_ne!(two, hash(&[("a", "{}")]), "a record fewer");
        // No ambiguity between the ref and the payload.
        assert_ne!(hash(&[("ab", "1")]), hash(&[("a", "b1")]));
    }

    #[test]
    fn entries_round_trip_and_keys_do_not_collide() {
        for e in [
            Entry::Live { seq: 7, request: [3; 32] },
            Entry::Tombstone { batch_id: [9; 16], deleted_at: 1_800_000_000 },
        ] {
            assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
            let b = e.encode();
            for cut in 0..b.len() {
                assert!(Entry::decode(&b[..cut]).is_err());
            }
        }
        assert_ne!(storage_key("a", "bc").unwrap(), storage_key("ab", "c").unwrap());
        assert_ne!(storage_key("a", "k").unwrap(), storage_key("b", "k").unwrap());
    }
}
