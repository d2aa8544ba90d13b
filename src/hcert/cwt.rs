//! CWT claims of an HCERT: issuer, issued-at, expiry and the DCC under claim −260 → 1.
//!
//! Encoding is strict and deterministic (integer timestamps, keys in RFC 8949 §4.2.1 order:
//! 1, 4, 6, −260), because the bytes are what gets signed. Decoding is lenient in the ways field
//! verifiers are (float timestamps, CBOR date-time tags inside the DCC), because it reads what
//! other countries signed.

use ciborium::Value;
use serde::ser::{Serialize, SerializeMap, Serializer};

use super::{Dcc, Error};

/// CWT claim key of the issuing country (ISO 3166-1 alpha-2).
pub const ISS: i64 = 1;
/// CWT claim key of the expiry time (seconds since the epoch).
pub const EXP: i64 = 4;
/// CWT claim key of the issue time (seconds since the epoch).
pub const IAT: i64 = 6;
/// CWT claim key of the HCERT container.
pub const HCERT: i64 = -260;
/// Key of the EU DCC v1 inside the HCERT container.
pub const EU_DCC_V1: i64 = 1;

/// The claims this appliance signs.
#[derive(Debug, Clone, Copy)]
pub struct Claims<'a> {
    /// Issuing country, e.g. `VN`.
    pub iss: &'a str,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch; must be later than `iat`.
    pub exp: i64,
    /// The certificate content.
    pub dcc: &'a Dcc,
}

/// `{1: dcc}`, the HCERT container.
struct Container<'a>(&'a Dcc);

impl Serialize for Container<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(&EU_DCC_V1, self.0)?;
        m.end()
    }
}

impl Serialize for Claims<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry(&ISS, self.iss)?;
        m.serialize_entry(&EXP, &self.exp)?;
        m.serialize_entry(&IAT, &self.iat)?;
        m.serialize_entry(&HCERT, &Container(self.dcc))?;
        m.end()
    }
}

impl Claims<'_> {
    /// Appends the CBOR encoding of the claims to `out` (cleared first).
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        if self.exp <= self.iat {
            return Err(Error::structure("CWT claims", "exp must be later than iat"));
        }
        if self.iss.len() != 2 || !self.iss.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Error::structure(
                "CWT claims",
                format!("iss {:?} is not an ISO 3166-1 alpha-2 code", self.iss),
            ));
        }
        out.clear();
        ciborium::into_writer(self, out).map_err(|e| Error::structure("CWT claims", e))
    }
}

/// Claims as read from a signed HCERT, with what is missing left as `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedClaims {
    /// Issuing country.
    pub iss: Option<String>,
    /// Issued at (float timestamps truncated).
    pub iat: Option<i64>,
    /// Expires at (float timestamps truncated).
    pub exp: Option<i64>,
    /// The DCC as JSON, exactly as signed (CBOR date-time tags become their text).
    pub dcc: serde_json::Value,
}

/// Reads the CWT claims from a COSE payload.
pub fn decode(payload: &[u8]) -> Result<DecodedClaims, Error> {
    let value: Value = ciborium::from_reader(payload).map_err(|e| Error::structure("CWT claims", e))?;
    let Value::Map(entries) = value else {
        return Err(Error::structure("CWT claims", "not a CBOR map"));
    };
    let mut claims = DecodedClaims { iss: None, iat: None, exp: None, dcc: serde_json::Value::Null };
    let mut container = None;
    for (k, v) in entries {
        let Some(key) = k.as_integer().and_then(|i| i64::try_from(i).ok()) else {
            continue; // text-keyed claims are not HCERT's business
        };
        match key {
            ISS => claims.iss = v.as_text().map(str::to_owned),
            IAT => claims.iat = Some(timestamp(&v, "iat")?),
            EXP => claims.exp = Some(timestamp(&v, "exp")?),
            HCERT => container = Some(v),
            _ => {}
        }
    }
    let Some(Value::Map(container)) = container else {
        return Err(Error::structure("CWT claims", "no HCERT claim (-260) map"));
    };
    let dcc = container
        .into_iter()
        .find(|(k, _)| k.as_integer().and_then(|i| i64::try_from(i).ok()) == Some(EU_DCC_V1))
        .map(|(_, v)| v)
        .ok_or_else(|| Error::structure("CWT claims", "no EU DCC v1 (-260 → 1)"))?;
    claims.dcc = to_json(dcc, 0)?;
    Ok(claims)
}

/// An integer timestamp, or a float one read leniently (truncated), as some issuers wrote them.
fn timestamp(v: &Value, name: &str) -> Result<i64, Error> {
    match v {
        Value::Integer(i) => {
            i64::try_from(*i).map_err(|_| Error::structure("CWT claims", format!("{name} out of range")))
        }
        Value::Float(f) if f.is_finite() && f.abs() < 1e15 => Ok(*f as i64),
        Value::Tag(1, inner) => timestamp(inner, name),
        _ => Err(Error::structure("CWT claims", format!("{name} is not a number"))),
    }
}

/// Deepest nesting accepted in a DCC (the schema needs 4 levels).
const MAX_DEPTH: usize = 16;

/// CBOR → JSON for the DCC: the schema is JSON, and issuers compare what they sent as JSON.
fn to_json(v: Value, depth: usize) -> Result<serde_json::Value, Error> {
    use serde_json::Value as J;
    if depth > MAX_DEPTH {
        return Err(Error::structure("DCC", "nested too deeply"));
    }
    Ok(match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(b),
        Value::Text(s) => J::String(s),
        Value::Integer(i) => {
            let i = i128::from(i);
            if let Ok(i) = i64::try_from(i) {
                J::from(i)
            } else if let Ok(u) = u64::try_from(i) {
                J::from(u)
            } else {
                return Err(Error::structure("DCC", "integer out of range"));
            }
        }
        Value::Float(f) => serde_json::Number::from_f64(f)
            .map(J::Number)
            .ok_or_else(|| Error::structure("DCC", "non-finite number"))?,
        // Tag 0 is an RFC 3339 date-time string: its text is the value.
        Value::Tag(_, inner) => to_json(*inner, depth + 1)?,
        Value::Array(a) => J::Array(a.into_iter().map(|x| to_json(x, depth + 1)).collect::<Result<_, _>>()?),
        Value::Map(m) => {
            let mut o = serde_json::Map::with_capacity(m.len());
            for (k, v) in m {
                let Value::Text(k) = k else {
                    return Err(Error::structure("DCC", "map key is not text"));
                };
                if o.insert(k, to_json(v, depth + 1)?).is_some() {
                    return Err(Error::structure("DCC", "duplicate map key"));
                }
            }
            J::Object(o)
        }
        Value::Bytes(_) => return Err(Error::structure("DCC", "byte string where text was expected")),
        _ => return Err(Error::structure("DCC", "unsupported CBOR item")),
    })
}
