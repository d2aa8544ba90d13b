//! The offline verifier: what an EU verifier app checks, as one report per `HC1:` string.
//!
//! It accepts what field verifiers accept (kid in the unprotected header, untagged COSE, a CWT
//! tag around the COSE_Sign1, PS256 DSCs, float timestamps) and reports each check on its own,
//! so that an expired certificate is told apart from a forged one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Serialize;

use super::cose::{self, Parsed};
use super::cwt::{self, DecodedClaims};
use super::transport;
use super::validate::{ErrorCode, FormatMode, SchemaOptions};
use super::valuesets::ValueSets;
use super::{Algorithm, CertificateType, Error, TrustList, validate};

/// The result of one check: `Ok`, a failure with its reason, or not reached.
pub type Check = Option<Result<(), String>>;

/// Everything the verifier found out about one `HC1:` string.
#[derive(Debug, Default)]
pub struct Verification {
    /// The first failure that stopped decoding (prefix, Base45, zlib, COSE or CWT structure).
    pub decode_error: Option<Error>,
    /// The COSE_Sign1, once parsed.
    pub cose: Option<Parsed>,
    /// The CWT claims, once decoded.
    pub claims: Option<DecodedClaims>,
    /// Signature, kid and algorithm against the trust list.
    pub signature: Check,
    /// Time: DSC notBefore ≤ iat ≤ clock ≤ exp ≤ DSC notAfter.
    pub validity: Check,
    /// The DSC's HCERT EKUs allow this certificate type.
    pub key_usage: Check,
    /// The DCC against the JSON schema.
    pub schema: Check,
    /// The DCC's codes against the EU value sets (not reached when the verifier has none).
    pub value_sets: Check,
}

impl Verification {
    /// Whether everything was reached and passed.
    pub fn ok(&self) -> bool {
        self.decode_error.is_none()
            && [&self.signature, &self.validity, &self.key_usage, &self.schema]
                .iter()
                .all(|c| matches!(c, Some(Ok(()))))
            && !matches!(self.value_sets, Some(Err(_)))
    }

    /// The type of the certificate, from which of `v`/`t`/`r` the DCC carries.
    pub fn certificate_type(&self) -> Option<CertificateType> {
        self.claims.as_ref().and_then(|c| certificate_type(&c.dcc))
    }

    /// The report printed by `hcert-signer verify`, one JSON object per input line.
    pub fn report(&self) -> Report {
        let mut errors = Vec::new();
        if let Some(e) = &self.decode_error {
            errors.push(format!("decode: {e}"));
        }
        for (name, check) in [
            ("signature", &self.signature),
            ("validity", &self.validity),
            ("key_usage", &self.key_usage),
            ("schema", &self.schema),
            ("value_sets", &self.value_sets),
        ] {
            if let Some(Err(e)) = check {
                errors.push(format!("{name}: {e}"));
            }
        }
        let claims = self.claims.as_ref();
        Report {
            ok: self.ok(),
            kid: self.cose.as_ref().and_then(|c| c.kid.as_ref()).map(|k| B64.encode(k)),
            alg: self.cose.as_ref().and_then(|c| c.alg).map(Algorithm::name),
            iss: claims.and_then(|c| c.iss.clone()),
            iat: claims.and_then(|c| c.iat),
            exp: claims.and_then(|c| c.exp),
            r#type: self.certificate_type().map(CertificateType::name),
            signature_valid: matches!(self.signature, Some(Ok(()))),
            time_valid: matches!(self.validity, Some(Ok(()))),
            errors,
        }
    }
}

/// One line of `hcert-signer verify` output. It carries no personal data: only the signing
/// metadata and the reasons for failure.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every check passed.
    pub ok: bool,
    /// The kid, base64.
    pub kid: Option<String>,
    /// The algorithm name.
    pub alg: Option<&'static str>,
    /// The issuing country.
    pub iss: Option<String>,
    /// Issued at (seconds).
    pub iat: Option<i64>,
    /// Expires at (seconds).
    pub exp: Option<i64>,
    /// `vaccination`, `test` or `recovery`.
    #[serde(rename = "type")]
    pub r#type: Option<&'static str>,
    /// The signature verified against the trust list (whatever the clock says).
    pub signature_valid: bool,
    /// The certificate and its DSC are valid at the clock.
    pub time_valid: bool,
    /// Why not, one entry per failed check.
    pub errors: Vec<String>,
}

/// The certificate type of a decoded DCC, if it carries exactly one of `v`/`t`/`r`.
pub fn certificate_type(dcc: &serde_json::Value) -> Option<CertificateType> {
    let present: Vec<CertificateType> =
        [("v", CertificateType::Vaccination), ("t", CertificateType::Test), ("r", CertificateType::Recovery)]
            .into_iter()
            .filter(|(k, _)| dcc.get(k).is_some())
            .map(|(_, t)| t)
            .collect();
    match present[..] {
        [one] => Some(one),
        _ => None,
    }
}

/// Verifies HCERTs against a trust list at a given time.
pub struct Verifier<'a> {
    trust: &'a TrustList,
    value_sets: Option<&'a ValueSets>,
}

impl<'a> Verifier<'a> {
    /// A verifier that also checks codes against `value_sets` (`None`: the bare JSON schema).
    pub fn new(trust: &'a TrustList, value_sets: Option<&'a ValueSets>) -> Self {
        Self { trust, value_sets }
    }

    /// Decodes and checks one `HC1:` string at `clock` (seconds since the epoch).
    pub fn verify(&self, hc1: &str, clock: i64) -> Verification {
        let mut v = Verification::default();
        let cose_bytes = match transport::decode(hc1) {
            Ok(b) => b,
            Err(e) => {
                v.decode_error = Some(e);
                return v;
            }
        };
        self.verify_cose(&cose_bytes, clock, &mut v);
        v
    }

    /// Checks COSE_Sign1 bytes (already out of their transport encoding).
    pub fn verify_cose(&self, cose_bytes: &[u8], clock: i64, v: &mut Verification) {
        let parsed = match cose::parse(cose_bytes) {
            Ok(p) => p,
            Err(e) => {
                v.decode_error = Some(e);
                return;
            }
        };
        let dsc = parsed.kid.as_deref().and_then(|k| self.trust.get(k));
        v.signature = Some(check_signature(&parsed, dsc));
        match cwt::decode(&parsed.payload) {
            Ok(claims) => {
                v.validity = Some(check_time(&claims, dsc, clock));
                v.key_usage = Some(match (dsc, certificate_type(&claims.dcc)) {
                    (None, _) => Err("no DSC to check against".into()),
                    (Some(_), None) => Err("the DCC carries not exactly one of v/t/r".into()),
                    (Some(d), Some(t)) if !d.allows(t) => {
                        Err(format!("the DSC's extended key usage does not allow {} certificates", t.name()))
                    }
                    _ => Ok(()),
                });
                let options = SchemaOptions { value_sets: self.value_sets, formats: FormatMode::Lenient };
                let (codes, schema): (Vec<_>, Vec<_>) = validate::check_schema_report(&claims.dcc, &options)
                    .into_iter()
                    .partition(|e| e.kind() == ErrorCode::ValueSet);
                v.schema = Some(joined(schema));
                v.value_sets = self.value_sets.map(|_| joined(codes));
                v.claims = Some(claims);
            }
            Err(e) => v.decode_error = Some(e),
        }
        v.cose = Some(parsed);
    }
}

/// `Ok` for no errors, else every error on one line.
fn joined(errors: Vec<validate::PayloadError>) -> Result<(), String> {
    if errors.is_empty() {
        return Ok(());
    }
    Err(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
}

fn check_signature(p: &Parsed, dsc: Option<&crate::pki::Dsc>) -> Result<(), String> {
    let kid = p.kid.as_deref().ok_or("no kid in either header")?;
    let dsc = dsc.ok_or_else(|| format!("kid {} is not in the trust list", B64.encode(kid)))?;
    let alg = match (p.alg, p.alg_id) {
        (Some(a), _) => a,
        (None, Some(id)) => return Err(format!("algorithm {id} is not allowed by HCERT")),
        (None, None) => return Err("no algorithm in either header".into()),
    };
    dsc.verify(alg, &p.tbs, &p.signature)
}

fn check_time(c: &DecodedClaims, dsc: Option<&crate::pki::Dsc>, clock: i64) -> Result<(), String> {
    let iat = c.iat.ok_or("no iat claim")?;
    let exp = c.exp.ok_or("no exp claim")?;
    let mut problems = Vec::new();
    if exp <= iat {
        problems.push(format!("exp {exp} is not after iat {iat}"));
    }
    if clock < iat {
        problems.push(format!("issued in the future (iat {iat} > clock {clock})"));
    }
    if clock > exp {
        problems.push(format!("expired at {exp} (clock {clock})"));
    }
    if let Some(d) = dsc {
        if iat < d.not_before {
            problems.push(format!("iat {iat} is before the DSC's notBefore {}", d.not_before));
        }
        if exp > d.not_after {
            problems.push(format!("exp {exp} is after the DSC's notAfter {}", d.not_after));
        }
        if clock > d.not_after {
            problems.push(format!("the DSC expired at {}", d.not_after));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}
