//! The trust list: which DSC certificate each kid names, in the interface's JSON form
//! `{"<kid base64>": "<DSC certificate DER base64>", …}`.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::Error;
use crate::pki::Dsc;

/// DSCs by key identifier.
#[derive(Debug, Clone, Default)]
pub struct TrustList {
    entries: BTreeMap<Vec<u8>, Dsc>,
}

fn invalid(detail: impl ToString) -> Error {
    Error::structure("trust list", detail)
}

impl TrustList {
    /// An empty trust list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the JSON form. Every entry must parse and its kid must be the certificate's own, so a
    /// mislabelled entry cannot make one DSC's signatures pass as another's.
    pub fn from_json(json: &str) -> Result<Self, Error> {
        let map: BTreeMap<String, String> = serde_json::from_str(json).map_err(invalid)?;
        let mut list = TrustList::new();
        for (kid_b64, cert_b64) in map {
            let kid = B64.decode(kid_b64.as_bytes()).map_err(|e| invalid(format!("kid {kid_b64:?}: {e}")))?;
            let der = B64
                .decode(cert_b64.as_bytes())
                .map_err(|e| invalid(format!("certificate of kid {kid_b64}: {e}")))?;
            let dsc =
                Dsc::from_der(&der).map_err(|e| invalid(format!("certificate of kid {kid_b64}: {e}")))?;
            if dsc.kid[..] != kid[..] {
                return Err(invalid(format!(
                    "kid {kid_b64} does not match its certificate (whose kid is {})",
                    B64.encode(dsc.kid)
                )));
            }
            list.insert(dsc);
        }
        Ok(list)
    }

    /// The JSON form, kids in byte order.
    pub fn to_json(&self) -> String {
        let map: BTreeMap<String, String> =
            self.entries.values().map(|d| (B64.encode(d.kid), B64.encode(&d.der))).collect();
        // A map of strings always serialises.
        serde_json::to_string(&map).unwrap_or_default()
    }

    /// Adds (or replaces) the entry for a DSC under its own kid.
    pub fn insert(&mut self, dsc: Dsc) {
        self.entries.insert(dsc.kid.to_vec(), dsc);
    }

    /// The DSC a kid names.
    pub fn get(&self, kid: &[u8]) -> Option<&Dsc> {
        self.entries.get(kid)
    }

    /// How many DSCs the list holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The DSCs, in kid order.
    pub fn iter(&self) -> impl Iterator<Item = &Dsc> {
        self.entries.values()
    }
}
