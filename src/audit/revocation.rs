//! Revocation export: the signatures an officer revokes, as EU gateway revocation batches
//! (`{"country","expires","kid","hashType","entries":[{"hash"}]}`, at most 1,000 entries each).
//!
//! The entries come from the audit log, which holds for every signature its UCI hash, its
//! COUNTRYCODEUCI hash (issuing country then UVCI) and its signature hash (SHA-256 over `r` for
//! ES256), each already truncated to the 128 bits the gateway takes. Each batch has one kid and
//! one hash type; its `expires` is the latest expiry of the certificates it covers, after which
//! verifiers may drop it. A batch's JSON is made once ([`RevocationBatch::content`]): the same
//! bytes are CMS-signed and written to its `.json` file, so the file equals the signed content.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Entry, Event, SignedRecord, rfc3339};

/// Most entries the gateway takes in one batch.
pub const MAX_ENTRIES: usize = 1000;

/// The hash types of the gateway's revocation batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HashType {
    /// SHA-256 over the UVCI.
    #[serde(rename = "UCI")]
    Uci,
    /// SHA-256 over the signature (`r` for ES256).
    #[serde(rename = "SIGNATURE")]
    Signature,
    /// SHA-256 over the issuing country code followed by the UVCI.
    #[serde(rename = "COUNTRYCODEUCI")]
    CountryCodeUci,
}

impl HashType {
    /// Every type, the default selection: a verifier may check any one of them.
    pub const ALL: [HashType; 3] = [HashType::Uci, HashType::Signature, HashType::CountryCodeUci];

    /// The gateway's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            HashType::Uci => "UCI",
            HashType::Signature => "SIGNATURE",
            HashType::CountryCodeUci => "COUNTRYCODEUCI",
        }
    }

    /// The record's hash of this type; `None` for a COUNTRYCODEUCI hash an older entry lacks.
    fn of(self, r: &SignedRecord) -> Option<&str> {
        let hash = match self {
            HashType::Uci => &r.uci_hash,
            HashType::Signature => &r.sig_hash,
            HashType::CountryCodeUci => &r.cc_uci_hash,
        };
        (!hash.is_empty()).then_some(hash.as_str())
    }
}

impl std::str::FromStr for HashType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        HashType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("{s:?} is not a hash type (UCI, SIGNATURE or COUNTRYCODEUCI)"))
    }
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

impl RevocationBatch {
    /// The batch's JSON as the gateway receives it: the content its CMS signature covers, and
    /// the exact bytes of its `.json` file (never serialised a second time).
    pub fn content(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a revocation batch serialises")
    }
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
            let Some(hash) = t.of(r) else { continue };
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
        SignedRecord::new(&format!("r{i}"), "VN", &format!("URN:UVCI:01:VN:{i}"), &[i as u8; 64], kid, exp)
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

    #[test]
    fn country_code_uci_is_over_the_country_then_the_uvci() {
        use base64::Engine as _;
        use sha2::Digest as _;
        let r = rec(7, "a2lkMQ==", 2_000_000_000);
        let full = sha2::Sha256::digest(b"VNURN:UVCI:01:VN:7");
        assert_eq!(r.cc_uci_hash, base64::engine::general_purpose::STANDARD.encode(&full[..16]));
        // An entry recorded before the hash was kept: revoked by UCI and SIGNATURE only.
        let old = SignedRecord { cc_uci_hash: String::new(), ..rec(8, "a2lkMQ==", 2_000_000_000) };
        let out = batches("VN", [&r, &old], &HashType::ALL, 1_000_000_000);
        let counts: Vec<(HashType, usize)> = out.iter().map(|b| (b.hash_type, b.entries.len())).collect();
        assert_eq!(counts, [(HashType::Uci, 2), (HashType::Signature, 2), (HashType::CountryCodeUci, 1)]);
        assert_eq!(out[2].entries[0].hash, r.cc_uci_hash);
    }

    #[test]
    fn content_is_the_gateway_dto_in_its_field_order() {
        let out = batches("VN", &[rec(1, "a2lkMQ==", 2_000_000_000)], &[HashType::CountryCodeUci], 0);
        let text = String::from_utf8(out[0].content()).unwrap();
        assert!(
            text.starts_with(r#"{"country":"VN","expires":"2033-05-18T03:33:20Z","kid":"a2lkMQ==","hashType":"COUNTRYCODEUCI","entries":[{"hash":""#),
            "{text}"
        );
        for t in HashType::ALL {
            assert_eq!(t.name().parse::<HashType>(), Ok(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.name());
        }
        assert!("uci".parse::<HashType>().unwrap_err().contains("UCI, SIGNATURE or COUNTRYCODEUCI"));
    }
}
