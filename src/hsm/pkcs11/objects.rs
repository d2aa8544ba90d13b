//! What a session does with the token's objects: find, generate and list keys, read public keys, sign.

use super::*;

impl Ctx<'_> {
    /// Maps a cryptoki error, and reports it to the supervisor if it is a device/session fault.
    pub(super) fn fail(&self, op: &'static str, e: CkError) -> Error {
        if is_fault(&e) {
            self.inner.report_fault(self.generation, &format!("{op}: {}", rv_name(&e)));
        }
        ck_error(op, &e)
    }

    /// The private-key handle for `label` in this generation, from the cache or looked up (by
    /// CKA_ID when the key is known, else by label).
    pub(super) fn private_handle(&self, s: &Session, label: &str) -> Result<ObjectHandle, Error> {
        if let Some((g, h)) = self.inner.keys.read().ok().and_then(|k| k.get(label).and_then(|c| c.handle))
            && g == self.generation.id
        {
            return Ok(h);
        }
        self.locate(s, label).map(|(_, h)| h)
    }

    /// Finds `label`'s key pair on the token, records it in the cache, and returns it with the
    /// private-key handle. Not finding it is checked against the token being there at all, so
    /// a vanished token is a fault and not a "key not found".
    pub(super) fn locate(&self, s: &Session, label: &str) -> Result<(KeyInfo, ObjectHandle), Error> {
        let known_id = self.inner.keys.read().ok().and_then(|k| k.get(label).map(|c| c.info.id.clone()));
        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        match &known_id {
            Some(id) => template.push(Attribute::Id(id.clone())),
            None => template.push(Attribute::Label(label.as_bytes().to_vec())),
        }
        let found = s.find_objects(&template).map_err(|e| self.fail("C_FindObjects", e))?;
        let private = match found.as_slice() {
            [h] => *h,
            [] => {
                // Empty result: is the token still there?
                self.generation
                    .pkcs11
                    .get_token_info(self.generation.slot)
                    .map_err(|e| self.fail("C_GetTokenInfo", e))?;
                // And still logged in? Private keys are invisible to a session that lost its
                // login (a C_Logout elsewhere in the process, a token reset): that is a fault to
                // recover from by logging in again, not a missing key.
                let state =
                    s.get_session_info().map_err(|e| self.fail("C_GetSessionInfo", e))?.session_state();
                if matches!(state, SessionState::RoPublic | SessionState::RwPublic) {
                    self.inner.report_fault(self.generation, "the session lost its login");
                    return Err(Error::Device {
                        op: "C_FindObjects",
                        rv: "CKR_USER_NOT_LOGGED_IN (the session lost its login)".into(),
                    });
                }
                if let Ok(mut k) = self.inner.keys.write() {
                    k.remove(label);
                }
                return Err(Error::KeyNotFound { label: label.into() });
            }
            many => {
                return Err(Error::KeyAmbiguous { label: label.into(), count: many.len() });
            }
        };
        let attrs = s
            .get_attributes(private, &[AttributeType::Id, AttributeType::Label, AttributeType::KeyType])
            .map_err(|e| self.fail("C_GetAttributeValue", e))?;
        let mut id = None;
        let mut found_label = None;
        let mut key_type = None;
        for a in attrs {
            match a {
                Attribute::Id(v) => id = Some(v),
                Attribute::Label(v) => found_label = Some(String::from_utf8_lossy(&v).into_owned()),
                Attribute::KeyType(t) => key_type = Some(t),
                _ => {}
            }
        }
        if key_type != Some(KeyType::EC) {
            return Err(Error::UnsupportedKey { label: label.into(), detail: "not an EC key".into() });
        }
        if found_label.as_deref() != Some(label) {
            // Found by a stale CKA_ID that now belongs to a relabelled key.
            if let Ok(mut k) = self.inner.keys.write() {
                k.remove(label);
            }
            return Err(Error::KeyNotFound { label: label.into() });
        }
        // Every lookup, not only the first: a key swapped on the token under the same label and
        // CKA_ID must be checked as well.
        self.check_protection(s, private, label)?;
        let id = id.unwrap_or_default();
        let public_key = self.public_key_for(s, label, &id)?;
        let info = KeyInfo { label: label.to_string(), id, public_key };
        if let Ok(mut k) = self.inner.keys.write() {
            k.insert(
                label.to_string(),
                CachedKey { info: info.clone(), handle: Some((self.generation.id, private)) },
            );
        }
        Ok((info, private))
    }

    /// Reads the public point of the public-key object sharing the private key's CKA_ID (or,
    /// without an id, its label).
    pub(super) fn public_key_for(
        &self,
        s: &Session,
        label: &str,
        id: &[u8],
    ) -> Result<p256::PublicKey, Error> {
        let mut template = vec![Attribute::Class(ObjectClass::PUBLIC_KEY)];
        if id.is_empty() {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        } else {
            template.push(Attribute::Id(id.to_vec()));
        }
        let found = s.find_objects(&template).map_err(|e| self.fail("C_FindObjects", e))?;
        let [public] = found.as_slice() else {
            return Err(Error::UnsupportedKey {
                label: label.into(),
                detail: format!("{} public-key objects share its CKA_ID (need exactly one)", found.len()),
            });
        };
        read_public_key(s, *public).map_err(|e| match e {
            ReadPoint::Ck(op, e) => self.fail(op, e),
            ReadPoint::Bad(detail) => Error::UnsupportedKey { label: label.into(), detail },
        })
    }

    /// Signs `digests` in order (raw `r‖s`, unverified); stops at the first error.
    pub(super) fn sign(
        &self,
        s: &Session,
        label: &str,
        digests: &[[u8; 32]],
    ) -> Result<Vec<[u8; 64]>, Error> {
        let mut out = Vec::with_capacity(digests.len());
        let mut handle = self.private_handle(s, label)?;
        let mut refreshed = false;
        for digest in digests {
            let sig = match s.sign(&Mechanism::Ecdsa, handle, digest) {
                Ok(sig) => sig,
                Err(CkError::Pkcs11(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid, _))
                    if !refreshed =>
                {
                    // The token renumbered its objects: look the key up again by CKA_ID once.
                    refreshed = true;
                    if let Ok(mut k) = self.inner.keys.write()
                        && let Some(c) = k.get_mut(label)
                    {
                        c.handle = None;
                    }
                    handle = self.locate(s, label)?.1;
                    s.sign(&Mechanism::Ecdsa, handle, digest).map_err(|e| self.fail("C_Sign", e))?
                }
                Err(e) => return Err(self.fail("C_Sign", e)),
            };
            let raw: [u8; 64] = sig.as_slice().try_into().map_err(|_| {
                self.inner.report_fault(
                    self.generation,
                    &format!("C_Sign returned {} bytes for a P-256 signature", sig.len()),
                );
                Error::Device { op: "C_Sign", rv: format!("{}-byte signature, expected 64", sig.len()) }
            })?;
            out.push(raw);
        }
        Ok(out)
    }

    pub(super) fn generate(&self, s: &Session, label: &str) -> Result<KeyInfo, Error> {
        let existing = s
            .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
            .map_err(|e| self.fail("C_FindObjects", e))?;
        if !existing.is_empty() {
            return Err(Error::KeyExists { label: label.into() });
        }
        let mut id = vec![0u8; 16];
        aws_lc_rs::rand::fill(&mut id)
            .map_err(|_| Error::Device { op: "generate key", rv: "no randomness for CKA_ID".into() })?;
        let label_bytes = label.as_bytes().to_vec();
        let public_template = [
            Attribute::Token(true),
            Attribute::Private(false),
            // Verify only: SoftHSM otherwise marks the public half encrypt/wrap by default.
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Derive(false),
            Attribute::EcParams(P256_EC_PARAMS.to_vec()),
            Attribute::Label(label_bytes.clone()),
            Attribute::Id(id.clone()),
        ];
        // Sign-only, sensitive, never extractable: the DSC private key cannot leave the token,
        // nor be used to decrypt, derive or unwrap.
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::SignRecover(false),
            Attribute::Decrypt(false),
            Attribute::Derive(false),
            Attribute::Unwrap(false),
            Attribute::Label(label_bytes),
            Attribute::Id(id.clone()),
        ];
        let (public, private) = s
            .generate_key_pair(&Mechanism::EccKeyPairGen, &public_template, &private_template)
            .map_err(|e| self.fail("C_GenerateKeyPair", e))?;
        // Trust but verify: a token that silently ignored the protection attributes must not
        // get to keep a key the appliance would then refuse to sign with.
        if let Err(e) = self.check_protection(s, private, label) {
            let _ = s.destroy_object(private);
            let _ = s.destroy_object(public);
            return Err(match e {
                Error::KeyRefused { reasons, .. } => Error::Refused {
                    op: "generate key",
                    rv: format!(
                        "the token did not keep the template ({}); key destroyed",
                        reasons.join("; ")
                    ),
                },
                e => e,
            });
        }
        let public_key = read_public_key(s, public).map_err(|e| match e {
            ReadPoint::Ck(op, e) => self.fail(op, e),
            ReadPoint::Bad(detail) => Error::UnsupportedKey { label: label.into(), detail },
        })?;
        let info = KeyInfo { label: label.to_string(), id, public_key };
        if let Ok(mut k) = self.inner.keys.write() {
            k.insert(
                label.to_string(),
                CachedKey { info: info.clone(), handle: Some((self.generation.id, private)) },
            );
        }
        log::info!("generated P-256 key {label:?} in the HSM");
        Ok(info)
    }

    pub(super) fn list(&self, s: &Session) -> Result<Vec<KeyInfo>, Error> {
        let privates = s
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::KeyType(KeyType::EC)])
            .map_err(|e| self.fail("C_FindObjects", e))?;
        let mut out = Vec::new();
        for h in privates {
            let attrs = s
                .get_attributes(h, &[AttributeType::Label, AttributeType::Id])
                .map_err(|e| self.fail("C_GetAttributeValue", e))?;
            let mut label = String::new();
            let mut id = Vec::new();
            for a in attrs {
                match a {
                    Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
                    Attribute::Id(v) => id = v,
                    _ => {}
                }
            }
            // Keys of other curves, or without a public half, are not DSC keys of ours.
            match self.public_key_for(s, &label, &id) {
                Ok(public_key) => out.push(KeyInfo { label, id, public_key }),
                Err(Error::UnsupportedKey { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.label.cmp(&b.label));
        Ok(out)
    }
}

impl Ctx<'_> {
    /// Refuses a private key that is not provably born in the token and stuck there, or that may
    /// do more than sign. Every attribute that is wrong is named, so an officer sees at once
    /// what the key is.
    pub(super) fn check_protection(
        &self,
        s: &Session,
        private: ObjectHandle,
        label: &str,
    ) -> Result<(), Error> {
        let attrs =
            s.get_attributes(private, &PROTECTION).map_err(|e| self.fail("C_GetAttributeValue", e))?;
        let reasons = protection_faults(&attrs);
        if reasons.is_empty() { Ok(()) } else { Err(Error::KeyRefused { label: label.into(), reasons }) }
    }
}

/// The attributes [`protection_faults`] judges.
const PROTECTION: [AttributeType; 10] = [
    AttributeType::Private,
    AttributeType::Sensitive,
    AttributeType::Extractable,
    AttributeType::NeverExtractable,
    AttributeType::Local,
    AttributeType::Sign,
    AttributeType::Decrypt,
    AttributeType::Unwrap,
    AttributeType::Derive,
    AttributeType::SignRecover,
];

/// What is wrong with a private key's attributes as a signing key of this appliance, one
/// message per attribute; empty when it is fit. An attribute the module does not report counts
/// as wrong, except CKA_SIGN_RECOVER, which not every module knows for EC keys.
pub(super) fn protection_faults(attrs: &[Attribute]) -> Vec<String> {
    let get = |t: AttributeType| bool_attr(attrs, t);
    let rules: [(AttributeType, &str, bool, &str); 10] = [
        (
            AttributeType::Private,
            "CKA_PRIVATE",
            true,
            "anyone with a session could use or read it without logging in",
        ),
        (AttributeType::Sensitive, "CKA_SENSITIVE", true, "its value can be read out of the HSM"),
        (
            AttributeType::Extractable,
            "CKA_EXTRACTABLE",
            false,
            "it can be exported wrapped, so it may leave the HSM",
        ),
        (
            AttributeType::NeverExtractable,
            "CKA_NEVER_EXTRACTABLE",
            true,
            "the key was extractable at some time, so it may exist outside the HSM",
        ),
        (
            AttributeType::Local,
            "CKA_LOCAL",
            true,
            "it was not generated on the token but imported, so a copy may exist outside the HSM",
        ),
        (AttributeType::Sign, "CKA_SIGN", true, "it cannot sign"),
        (AttributeType::Decrypt, "CKA_DECRYPT", false, "it may also decrypt; a signing key must only sign"),
        (AttributeType::Unwrap, "CKA_UNWRAP", false, "it may also unwrap keys; a signing key must only sign"),
        (AttributeType::Derive, "CKA_DERIVE", false, "it may also derive keys; a signing key must only sign"),
        (
            AttributeType::SignRecover,
            "CKA_SIGN_RECOVER",
            false,
            "it may also sign with recovery; a signing key must only sign",
        ),
    ];
    let mut out = Vec::new();
    for (t, name, want, why) in rules {
        match get(t) {
            Some(v) if v == want => {}
            Some(v) => out.push(format!("{name} is {v} ({why})")),
            None if t == AttributeType::SignRecover => {}
            None => out.push(format!("{name} is not reported by the module (it must be {want})")),
        }
    }
    out
}

enum ReadPoint {
    Ck(&'static str, CkError),
    Bad(String),
}

/// Reads `CKA_EC_PARAMS` and `CKA_EC_POINT` of a public-key object; accepts the point DER-wrapped
/// in an OCTET STRING (as PKCS#11 specifies) or raw (as some modules return it).
fn read_public_key(s: &Session, public: ObjectHandle) -> Result<p256::PublicKey, ReadPoint> {
    let attrs = s
        .get_attributes(public, &[AttributeType::EcParams, AttributeType::EcPoint])
        .map_err(|e| ReadPoint::Ck("C_GetAttributeValue", e))?;
    let mut params = None;
    let mut point = None;
    for a in attrs {
        match a {
            Attribute::EcParams(p) => params = Some(p),
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    if params.as_deref() != Some(&P256_EC_PARAMS[..]) {
        return Err(ReadPoint::Bad("not on the P-256 curve".into()));
    }
    let point = point.ok_or_else(|| ReadPoint::Bad("no CKA_EC_POINT".into()))?;
    let raw = match point.as_slice() {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && rest.first() == Some(&0x04) => rest,
        other => other,
    };
    p256::PublicKey::from_sec1_bytes(raw)
        .map_err(|_| ReadPoint::Bad("CKA_EC_POINT is not a valid P-256 point".into()))
}

/// The value of a boolean attribute of type `ty` among `attrs`, if the module reported it.
pub(super) fn bool_attr(attrs: &[Attribute], ty: AttributeType) -> Option<bool> {
    attrs.iter().find_map(|a| match (ty, a) {
        (AttributeType::Private, Attribute::Private(v))
        | (AttributeType::Sensitive, Attribute::Sensitive(v))
        | (AttributeType::Extractable, Attribute::Extractable(v))
        | (AttributeType::NeverExtractable, Attribute::NeverExtractable(v))
        | (AttributeType::Local, Attribute::Local(v))
        | (AttributeType::Sign, Attribute::Sign(v))
        | (AttributeType::SignRecover, Attribute::SignRecover(v))
        | (AttributeType::Verify, Attribute::Verify(v))
        | (AttributeType::Encrypt, Attribute::Encrypt(v))
        | (AttributeType::Decrypt, Attribute::Decrypt(v))
        | (AttributeType::Wrap, Attribute::Wrap(v))
        | (AttributeType::Unwrap, Attribute::Unwrap(v))
        | (AttributeType::Derive, Attribute::Derive(v)) => Some(*v),
        _ => None,
    })
}
