//! Signing a chunk of records: validate → UVCI → pick the DSC → CWT → COSE digest → HSM →
//! assemble → `HC1:`. Per-record problems become rejections; only an HSM outage fails the chunk.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::audit::SignedRecord;
use crate::hcert::Dcc;
use crate::hcert::cose::{KID_LEN, Prepared};
use crate::hcert::encoder::Encoder;
use crate::hcert::uvci::UvciGenerator;
use crate::hcert::validate::Policy;
use crate::hsm::{self, Hsm};
use crate::keys::{self, ActiveKey, Keyring};
use crate::store::{MAX_DCC_BYTES, NewRecord, OVERSIZE_DCC, RecordError, RecordResult};

/// The fixed settings of signing.
#[derive(Debug, Clone)]
pub struct SigningSettings {
    /// Issuing country: CWT `iss` and the UVCI country.
    pub country: String,
    /// Seconds from `iat` to `exp`.
    pub validity_secs: i64,
    /// What to do when that would take `exp` past the DSC's notAfter.
    pub exp_beyond_dsc: crate::config::ExpBeyondDsc,
    /// The UVCI generator.
    pub uvci: UvciGenerator,
    /// The payload policy (its clock is moved to "now" for every chunk).
    pub policy: Policy,
}

/// Signs chunks of records; one per worker thread (it keeps per-DSC encoders and buffers).
pub struct ChunkSigner {
    hsm: Hsm,
    keyring: Keyring,
    settings: SigningSettings,
    encoders: HashMap<[u8; KID_LEN], Encoder>,
}

/// A record that passed validation, waiting for its signature.
struct Pending {
    index: usize,
    key: ActiveKey,
    uvci: String,
    iat: i64,
    exp: i64,
    prepared: Prepared,
}

/// A record's result, with the audit facts of its signature when it was signed.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The result as the issuer gets it.
    pub result: RecordResult,
    /// What the audit log records of the signature (`None` for a rejection).
    pub audit: Option<SignedRecord>,
}

fn rejected(r#ref: &str, code: &str, message: String) -> RecordResult {
    RecordResult::Rejected { r#ref: r#ref.to_owned(), error: RecordError { code: code.to_owned(), message } }
}

impl ChunkSigner {
    /// A signer over `hsm` using the keys in `keyring`.
    pub fn new(hsm: Hsm, keyring: Keyring, settings: SigningSettings) -> Self {
        Self { hsm, keyring, settings, encoders: HashMap::new() }
    }

    /// Signs `inputs` at time `now`, returning one result per input in order. `Err` means the
    /// HSM could not sign (an outage): nothing was released and the chunk should be retried.
    pub fn sign_chunk(&mut self, inputs: &[NewRecord<'_>], now: i64) -> Result<Vec<Signed>, hsm::Error> {
        let policy = self.settings.policy.clone().with_now(
            time::OffsetDateTime::from_unix_timestamp(now)
                .unwrap_or_else(|_| time::OffsetDateTime::now_utc()),
        );
        // One consistent key set for the whole chunk, even if a rotation lands meanwhile.
        let keys = self.keyring.snapshot();
        let mut results: Vec<Option<Signed>> = vec![None; inputs.len()];
        let mut pending = Vec::with_capacity(inputs.len());
        for (index, input) in inputs.iter().enumerate() {
            match self.prepare(input, &policy, &keys, now) {
                Ok(p) => pending.push(Pending { index, ..p }),
                Err(r) => results[index] = Some(Signed { result: r, audit: None }),
            }
        }
        // Sign per key: a chunk may straddle a rotation, so it may use several DSCs.
        let mut by_label: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, p) in pending.iter().enumerate() {
            by_label.entry(p.key.label.as_str()).or_default().push(i);
        }
        let mut signatures: Vec<Option<[u8; 64]>> = vec![None; pending.len()];
        for (label, members) in &by_label {
            let items: Vec<(&[u8], [u8; 32])> = members
                .iter()
                .map(|&i| (pending[i].prepared.tbs.as_slice(), pending[i].prepared.digest))
                .collect();
            let started = std::time::Instant::now();
            let sigs = self.hsm.sign_many(label, &items)?;
            crate::metrics::get().hsm_sign_duration.observe(started.elapsed().as_secs_f64());
            for (&i, sig) in members.iter().zip(sigs) {
                signatures[i] = Some(sig);
            }
        }
        for (p, sig) in pending.into_iter().zip(signatures) {
            let input = &inputs[p.index];
            let kid = p.key.dsc.kid;
            let encoder = self.encoder(&p.key);
            let result = match sig.map(|s| (encoder.finish(p.prepared, &s), s)) {
                Some((Ok(hc1), s)) => {
                    let kid = B64.encode(kid);
                    let audit =
                        SignedRecord::new(input.r#ref, &self.settings.country, &p.uvci, &s, &kid, p.exp);
                    let result = RecordResult::Signed {
                        r#ref: input.r#ref.to_owned(),
                        hc1,
                        uvci: p.uvci,
                        kid,
                        iat: p.iat,
                        exp: p.exp,
                    };
                    Signed { result, audit: Some(audit) }
                }
                Some((Err(e), _)) => {
                    Signed { result: rejected(input.r#ref, "encoding", e.to_string()), audit: None }
                }
                // sign_many returns one signature per item; this arm keeps the code total.
                None => Signed {
                    result: rejected(input.r#ref, "encoding", "no signature was returned".into()),
                    audit: None,
                },
            };
            results[p.index] = Some(result);
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Signed {
                    result: rejected("", "encoding", "record lost".into()),
                    audit: None,
                })
            })
            .collect())
    }

    /// The encoder of a DSC, made on first use and kept for its buffers and header.
    fn encoder(&mut self, key: &ActiveKey) -> &mut Encoder {
        self.encoders
            .entry(key.dsc.kid)
            .or_insert_with(|| Encoder::new(&self.settings.country, key.header.clone()))
    }

    /// Validation up to the digest, or the record's rejection.
    fn prepare(
        &mut self,
        input: &NewRecord<'_>,
        policy: &Policy,
        keys: &[ActiveKey],
        now: i64,
    ) -> Result<Pending, RecordResult> {
        if input.dcc_json == OVERSIZE_DCC {
            return Err(rejected(
                input.r#ref,
                "dcc_too_large",
                format!(
                    "the dcc is over {MAX_DCC_BYTES} bytes of JSON (a certificate that large cannot fit a QR code)"
                ),
            ));
        }
        let text = std::str::from_utf8(input.dcc_json)
            .map_err(|_| rejected(input.r#ref, "json", "the DCC is not UTF-8 text".into()))?;
        let mut dcc =
            Dcc::from_json_str(text, policy).map_err(|e| rejected(input.r#ref, e.code(), e.to_string()))?;
        let uvci = dcc
            .ensure_uvci(&self.settings.uvci)
            .map_err(|e| rejected(input.r#ref, "uvci", e.to_string()))?
            .to_owned();
        let key = keys::select(keys, dcc.kind(), now)
            .map_err(|e| rejected(input.r#ref, "no_key", e.to_string()))?;
        let iat = now;
        let wanted = now.saturating_add(self.settings.validity_secs);
        // exp never exceeds the DSC's notAfter: shorten the certificate, or refuse it.
        let exp = if wanted <= key.dsc.not_after {
            wanted
        } else if self.settings.exp_beyond_dsc == crate::config::ExpBeyondDsc::Reject {
            return Err(rejected(
                input.r#ref,
                "dsc_expiring",
                format!(
                    "the DSC expires at {}, before the full validity of this certificate: rotate the DSC",
                    crate::keys::lifecycle::rfc3339(key.dsc.not_after)
                ),
            ));
        } else {
            key.dsc.not_after
        };
        if exp <= iat {
            return Err(rejected(input.r#ref, "no_key", "the DSC expires now: rotate it".into()));
        }
        let encoder = self.encoder(&key);
        let prepared =
            encoder.prepare(&dcc, iat, exp).map_err(|e| rejected(input.r#ref, "encoding", e.to_string()))?;
        Ok(Pending { index: 0, key, uvci, iat, exp, prepared })
    }
}
