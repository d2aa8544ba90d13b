//! Revocation export: the signatures an officer revokes, as EU gateway revocation batches
//! (`{"country","expires","kid","hashType","entries":[{"hash"}]}`, at most 1,000 entries each).
//!
//! The entries come from the audit log, which holds for every signature its UCI hash and its
//! signature hash (SHA-256 over `r` for ES256), both already truncated to the 128 bits the
//! gateway takes. Each batch has one kid and one hash type; its `expires` is the latest expiry of
//! the certificates it covers, after which verifiers may drop it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Entry, Event, SignedRecord, rfc3339};

/// Most entries the gateway takes in one batch.
pub const MAX_ENTRIES: usize = 1000;

/// The hash types exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum HashType {
    /// SHA-256 over the UVCI.
    #[serde(rename = "UCI")]
    Uci,
    /// SHA-256 over the signature (`r` for ES256).
    #[serde(rename = "SIGNATURE")]
    Signature,
}

/// One hash to revoke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevocationEntry {
    /// The 128-bit hash, base64.
    pub hash: String,
}

/// A revocation batch as the EU gateway takes it (before its CMS signature).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevocationBatch {
    /// The issuing country.
    pub country: String,
    /// RFC 3339: the latest expiry of the certificates covered.
    pub expires: String,
    /// The DSC's kid, base64.
    pub kid: String,
    /// What the hashes are over.
    pub hash_type: HashType,
    /// The hashes, at most [`MAX_ENTRIES`].
    pub entries: Vec<RevocationEntry>,
}

/// Which signatures to revoke.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Every signature over these UVCIs (each certificate, and each re-issue of it).
    Uvcis(Vec<String>),
    /// Every signature released for this batch id.
    Batch(String),
}

impl Selection {
    /// Picks the selected signatures out of stored audit entries (`hash ‖ JSON`), in log order.
    /// An entry that does not parse is an error naming it: run `audit verify`.
    pub fn pick<I>(&self, entries: I) -> Result<Vec<SignedRecord>, String>
    where
        I: IntoIterator<Item = Result<(u64, Vec<u8>), String>>,
    {
        use base64::Engine as _;
        let wanted: std::collections::HashSet<String> = match self {
            Selection::Uvcis(list) => list
                .iter()
                .map(|u| {
                    base64::engine::general_purpose::STANDARD.encode(super::hash128(u.trim().as_bytes()))
                })
                .collect(),
            Selection::Batch(_) => Default::default(),
        };
        let mut out = Vec::new();
        for item in entries {
            let (seq, stored) = item?;
            let entry: Entry = serde_json::from_slice(stored.get(32..).unwrap_or_default()).map_err(|e| {
                format!("audit entry {seq} is unreadable ({e}): run `hcert-signer audit verify`")
            })?;
            if let Event::Signed { batch, records, .. } = entry.event {
                match self {
                    Selection::Uvcis(_) => {
                        out.extend(records.into_iter().filter(|r| wanted.contains(&r.uci_hash)))
                    }
                    Selection::Batch(id) if *id == batch => out.extend(records),
                    Selection::Batch(_) => {}
                }
            }
        }
        Ok(out)
    }
}

/// Groups `records` into batches per kid and hash type, leaving out certificates already
/// expired at `now` (nothing to revoke) and repeated hashes.
pub fn batches<'a>(
    country: &str,
    records: impl IntoIterator<Item = &'a SignedRecord>,
    types: &[HashType],
    now: i64,
) -> Vec<RevocationBatch> {
    // kid → type → hash → latest expiry
    let mut groups: BTreeMap<(&str, HashType), BTreeMap<&str, i64>> = BTreeMap::new();
    for r in records.into_iter().filter(|r| r.exp > now) {
        for &t in types.iter().collect::<BTreeSet<_>>() {
            let hash = match t {
                HashType::Uci => r.uci_hash.as_str(),
                HashType::Signature => r.sig_hash.as_str(),
            };
            let exp = groups.entry((r.kid.as_str(), t)).or_default().entry(hash).or_insert(r.exp);
            *exp = (*exp).max(r.exp);
        }
    }
    let mut out = Vec::new();
    for ((kid, hash_type), hashes) in groups {
        let hashes: Vec<(&str, i64)> = hashes.into_iter().collect();
        for chunk in hashes.chunks(MAX_ENTRIES) {
            let latest = chunk.iter().map(|(_, e)| *e).max().unwrap_or(now);
            out.push(RevocationBatch {
                country: country.to_owned(),
                expires: rfc3339(latest),
                kid: kid.to_owned(),
                hash_type,
                entries: chunk.iter().map(|(h, _)| RevocationEntry { hash: (*h).to_owned() }).collect(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u32, kid: &str, exp: i64) -> SignedRecord {
        SignedRecord::new(&format!("r{i}"), &format!("URN:UVCI:01:VN:{i}"), &[i as u8; 64], kid, exp)
    }

    #[test]
    fn split_by_kid_type_and_size() {
        let mut records: Vec<SignedRecord> = (0..2500).map(|i| rec(i, "a2lkMQ==", 2_000_000_000)).collect();
        records.push(rec(1, "a2lkMg==", 2_100_000_000));
        records.push(rec(2, "a2lkMg==", 100)); // already expired: left out
        let out = batches("VN", &records, &[HashType::Uci, HashType::Signature], 1_000_000_000);
        let sizes: Vec<(String, HashType, usize)> =
            out.iter().map(|b| (b.kid.clone(), b.hash_type, b.entries.len())).collect();
        // 2,500 distinct UVCIs; signatures of byte i repeat every 256 → 256 distinct hashes.
        assert_eq!(
            sizes,
            vec![
                ("a2lkMQ==".into(), HashType::Uci, 1000),
                ("a2lkMQ==".into(), HashType::Uci, 1000),
                ("a2lkMQ==".into(), HashType::Uci, 500),
                ("a2lkMQ==".into(), HashType::Signature, 256),
                ("a2lkMg==".into(), HashType::Uci, 1),
                ("a2lkMg==".into(), HashType::Signature, 1),
            ]
        );
        let json = serde_json::to_value(&out[4]).unwrap();
        assert_eq!(json["hashType"], "UCI");
        assert_eq!(json["country"], "VN");
        assert_eq!(json["expires"], "2036-07-18T13:20:00Z");
        assert_eq!(json["entries"][0]["hash"].as_str().unwrap().len(), 24);
    }
}
