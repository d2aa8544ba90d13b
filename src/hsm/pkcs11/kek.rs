//! The store's key-encryption key on a PKCS#11 token: an AES-256 secret key generated on the
//! token (`CKA_LOCAL`), sensitive, never extractable, and usable only to wrap and unwrap
//! (`CKM_AES_KEY_WRAP_PAD`, RFC 5649). A data key passes through the token only as a session
//! object that is destroyed before the call returns; it never becomes a token object.

use zeroize::Zeroizing;

use super::objects::bool_attr;
use super::*;

/// What a KEK must be, attribute by attribute: found or generated, anything else is refused.
const REQUIRED: &[(AttributeType, bool, &str)] = &[
    (AttributeType::Sensitive, true, "CKA_SENSITIVE"),
    (AttributeType::Extractable, false, "CKA_EXTRACTABLE"),
    (AttributeType::NeverExtractable, true, "CKA_NEVER_EXTRACTABLE"),
    (AttributeType::Local, true, "CKA_LOCAL"),
    (AttributeType::Wrap, true, "CKA_WRAP"),
    (AttributeType::Unwrap, true, "CKA_UNWRAP"),
    (AttributeType::Encrypt, false, "CKA_ENCRYPT"),
    (AttributeType::Decrypt, false, "CKA_DECRYPT"),
    (AttributeType::Sign, false, "CKA_SIGN"),
    (AttributeType::Verify, false, "CKA_VERIFY"),
    (AttributeType::Derive, false, "CKA_DERIVE"),
];

impl Ctx<'_> {
    /// The KEK's handle, checked against [`REQUIRED`] (a key put there by someone else with
    /// weaker attributes is refused, naming the attribute).
    pub(super) fn kek(&self, s: &Session, label: &str) -> Result<ObjectHandle, Error> {
        let found = s
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(|e| self.fail("C_FindObjects", e))?;
        let handle = match found.as_slice() {
            [] => {
                // A vanished token is a fault, not a missing key.
                self.generation
                    .pkcs11
                    .get_token_info(self.generation.slot)
                    .map_err(|e| self.fail("C_GetTokenInfo", e))?;
                return Err(Error::KekNotFound { label: label.into() });
            }
            [h] => *h,
            more => return Err(Error::KeyAmbiguous { label: label.into(), count: more.len() }),
        };
        let types: Vec<AttributeType> =
            std::iter::once(AttributeType::KeyType).chain(REQUIRED.iter().map(|r| r.0)).collect();
        let attrs = s.get_attributes(handle, &types).map_err(|e| self.fail("C_GetAttributeValue", e))?;
        if !attrs.iter().any(|a| matches!(a, Attribute::KeyType(t) if *t == KeyType::AES)) {
            return Err(Error::UnsafeKek {
                label: label.into(),
                detail: "CKA_KEY_TYPE is not CKK_AES".into(),
            });
        }
        for &(ty, want, name) in REQUIRED {
            if bool_attr(&attrs, ty) != Some(want) {
                return Err(Error::UnsafeKek {
                    label: label.into(),
                    detail: format!("{name} must be {}", if want { "true" } else { "false" }),
                });
            }
        }
        Ok(handle)
    }

    /// Generates the KEK on the token.
    pub(super) fn generate_kek(&self, s: &Session, label: &str) -> Result<(), Error> {
        let existing = s
            .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
            .map_err(|e| self.fail("C_FindObjects", e))?;
        if !existing.is_empty() {
            return Err(Error::KeyExists { label: label.into() });
        }
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        let handle =
            s.generate_key(&Mechanism::AesKeyGen, &template).map_err(|e| self.fail("C_GenerateKey", e))?;
        // Trust but verify: a token that ignored part of the template does not keep the key.
        if let Err(e) = self.kek(s, label) {
            let _ = s.destroy_object(handle);
            return Err(e);
        }
        log::info!("generated the store's key-encryption key {label:?} in the HSM");
        Ok(())
    }

    /// Wraps a data key: it enters the token as an extractable session object, is wrapped under
    /// the KEK, and the object is destroyed.
    pub(super) fn wrap_data_key(&self, s: &Session, label: &str, key: &[u8]) -> Result<Vec<u8>, Error> {
        let kek = self.kek(s, label)?;
        let object = s
            .create_object(&[data_key_template(), vec![Attribute::Value(key.to_vec())]].concat())
            .map_err(|e| self.fail("C_CreateObject", e))?;
        let wrapped = s.wrap_key(&Mechanism::AesKeyWrapPad, kek, object);
        let _ = s.destroy_object(object);
        wrapped.map_err(|e| self.fail("C_WrapKey", e))
    }

    /// Unwraps a data key into a session object, reads it and destroys the object.
    pub(super) fn unwrap_data_key(
        &self,
        s: &Session,
        label: &str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let kek = self.kek(s, label)?;
        let object = s.unwrap_key(&Mechanism::AesKeyWrapPad, kek, wrapped, &data_key_template()).map_err(
            |e| match e {
                // Not a fault of the device: the wrapped key is damaged or from another KEK.
                // SoftHSM2 answers a failed RFC 5649 integrity check with CKR_GENERAL_ERROR;
                // treating that as a fault would reset the whole pool for one bad stored value
                // (a real device fault shows again on the next call and is handled there).
                CkError::Pkcs11(
                    RvError::WrappedKeyInvalid
                    | RvError::WrappedKeyLenRange
                    | RvError::EncryptedDataInvalid
                    | RvError::GeneralError,
                    _,
                ) => Error::Refused { op: "C_UnwrapKey", rv: rv_name(&e) },
                e => self.fail("C_UnwrapKey", e),
            },
        )?;
        let value = s.get_attributes(object, &[AttributeType::Value]);
        let _ = s.destroy_object(object);
        let value = value.map_err(|e| self.fail("C_GetAttributeValue", e))?;
        match value.into_iter().next() {
            Some(Attribute::Value(v)) => Ok(Zeroizing::new(v)),
            _ => Err(Error::Refused {
                op: "C_UnwrapKey",
                rv: "the unwrapped key's value is not readable".into(),
            }),
        }
    }
}

/// A data key inside the token: a session object only, extractable because it is wrapped
/// out (or read after unwrapping), never kept on the token.
fn data_key_template() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ]
}
