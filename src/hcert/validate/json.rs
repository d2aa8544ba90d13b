//! A minimal JSON tree: keeps duplicate keys (so they can be refused) and borrows strings from the
//! input where it can (so parsing allocates little).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

use super::{ErrorCode, PayloadError};

/// A JSON number as parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    U(u64),
    I(i64),
    F(f64),
}

/// A JSON value; objects keep their keys in document order, duplicates included.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    Num(Num),
    Str(Cow<'a, str>),
    Arr(Vec<Json<'a>>),
    Obj(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    pub(super) fn type_name(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "boolean",
            Json::Num(_) => "number",
            Json::Str(_) => "string",
            Json::Arr(_) => "array",
            Json::Obj(_) => "object",
        }
    }

    /// A view of a `serde_json::Value` that borrows all its strings.
    pub(crate) fn from_value(v: &'a serde_json::Value) -> Json<'a> {
        use serde_json::Value;
        match v {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Num(if let Some(u) = n.as_u64() {
                Num::U(u)
            } else if let Some(i) = n.as_i64() {
                Num::I(i)
            } else {
                Num::F(n.as_f64().unwrap_or(f64::NAN))
            }),
            Value::String(s) => Json::Str(Cow::Borrowed(s)),
            Value::Array(a) => Json::Arr(a.iter().map(Json::from_value).collect()),
            Value::Object(o) => {
                Json::Obj(o.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), Json::from_value(v))).collect())
            }
        }
    }
}

/// The first value under `key`.
pub(crate) fn get<'j, 'a>(obj: &'j [(Cow<'a, str>, Json<'a>)], key: &str) -> Option<&'j Json<'a>> {
    obj.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// A string that borrows from the input when it holds no escapes.
pub(super) struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The key serde_json uses for numbers when its `arbitrary_precision` feature is on (some other
/// crate in the build may enable it).
pub(super) const ARBITRARY_PRECISION_KEY: &str = "$serde_json::private::Number";

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Json::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(Json::Bool(b))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok(Json::Num(Num::U(n)))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(Json::Num(if n >= 0 { Num::U(n as u64) } else { Num::I(n) }))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
                Ok(Json::Num(Num::F(n)))
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Json::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Json::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Json::Str(Cow::Owned(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(16));
                while let Some(item) = seq.next_element()? {
                    v.push(item);
                }
                Ok(Json::Arr(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(map.size_hint().unwrap_or(8).min(16));
                while let Some(CowStr(k)) = map.next_key()? {
                    if v.is_empty() && k == ARBITRARY_PRECISION_KEY {
                        let CowStr(n) = map.next_value()?;
                        return Ok(Json::Num(parse_number_text(&n)));
                    }
                    let value = map.next_value()?;
                    v.push((k, value));
                }
                Ok(Json::Obj(v))
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) fn parse_number_text(s: &str) -> Num {
    if let Ok(u) = s.parse::<u64>() {
        Num::U(u)
    } else if let Ok(i) = s.parse::<i64>() {
        Num::I(i)
    } else {
        Num::F(s.parse::<f64>().unwrap_or(f64::NAN))
    }
}

/// Parses one record's JSON.
pub(crate) fn parse_json(s: &str) -> Result<Json<'_>, PayloadError> {
    serde_json::from_str(s)
        .map_err(|e| PayloadError::new(ErrorCode::Json, "", format!("not valid JSON: {e}")))
}

/// NFC-normalises every string value in place (keys are matched against ASCII field names, so
/// they are left alone). ASCII strings, the vast majority, cost one scan.
pub(crate) fn normalize_nfc(j: &mut Json<'_>) {
    match j {
        Json::Str(s) => {
            if !s.is_ascii() && is_nfc_quick(s.chars()) != IsNormalized::Yes {
                let n: String = s.nfc().collect();
                if n != **s {
                    *s = Cow::Owned(n);
                }
            }
        }
        Json::Arr(a) => a.iter_mut().for_each(normalize_nfc),
        Json::Obj(o) => o.iter_mut().for_each(|(_, v)| normalize_nfc(v)),
        Json::Null | Json::Bool(_) | Json::Num(_) => {}
    }
}
