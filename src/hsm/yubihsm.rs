//! YubiHSM2 backend: keys generated on the device (sign-ecdsa only, not exportable), found by
//! label, signing a prehashed digest.
//!
//! It talks to yubihsm-connector over HTTP (default) or to the device over USB (build feature
//! `yubihsm-usb`). Each command is bounded by the connector's timeout. The device executes one
//! command at a time, so one authenticated session is shared by all callers. No device exists
//! in this project's CI: the backend is tested against the yubihsm crate's `MockHsm`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use yubihsm::asymmetric::Algorithm as AsymAlg;
use yubihsm::object::{Filter, Id, Label, Origin, Type};
use yubihsm::{Capability, Client, Connector, Credentials, Domain};

use super::{Backend, BackendStats, Error, KeyInfo, YubiHsmConfig};

/// The YubiHSM2 backend.
pub struct YubiHsmBackend {
    connector: Connector,
    credentials: Credentials,
    auth_key_id: u16,
    domains: Domain,
    client: Mutex<Client>,
    /// Label → object id, so signing does not list objects each time.
    ids: RwLock<HashMap<String, Id>>,
    faults: AtomicU64,
    reinits: AtomicU64,
    pin_attempts: AtomicU64,
}

impl YubiHsmBackend {
    /// Connects and authenticates as configured. A wrong authentication key or password fails
    /// at once and is not retried.
    pub fn open(cfg: &YubiHsmConfig) -> Result<YubiHsmBackend, Error> {
        let connector = connector_for(cfg)?;
        let password = cfg.password.load()?;
        let credentials = Credentials::from_password(cfg.auth_key_id, password.expose_bytes());
        let domains = domains_from(&cfg.domains)?;
        YubiHsmBackend::from_connector(connector, credentials, cfg.auth_key_id, domains)
    }

    /// Builds the backend on an existing connector (tests pass `Connector::mockhsm()`).
    pub fn from_connector(
        connector: Connector,
        credentials: Credentials,
        auth_key_id: u16,
        domains: Domain,
    ) -> Result<YubiHsmBackend, Error> {
        let backend = YubiHsmBackend {
            client: Mutex::new(
                Client::create(connector.clone(), credentials.clone())
                    .map_err(|e| map_err("connect", auth_key_id, &e))?,
            ),
            connector,
            credentials,
            auth_key_id,
            domains,
            ids: RwLock::new(HashMap::new()),
            faults: AtomicU64::new(0),
            reinits: AtomicU64::new(0),
            pin_attempts: AtomicU64::new(0),
        };
        backend.pin_attempts.fetch_add(1, Ordering::Relaxed);
        backend.with_client("connect", |c| c.connect())?;
        Ok(backend)
    }

    fn with_client<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Client) -> Result<T, yubihsm::client::Error>,
    ) -> Result<T, Error> {
        let client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        f(&client).map_err(|e| map_err(op, self.auth_key_id, &e))
    }

    fn key_entries(&self, label: &str) -> Result<Vec<Id>, Error> {
        let label = Label::from_bytes(label.as_bytes()).map_err(|_| Error::InvalidLabel {
            label: label.into(),
            reason: "too long for a YubiHSM label",
        })?;
        let entries = self.with_client("list objects", |c| {
            c.list_objects(&[Filter::Type(Type::AsymmetricKey), Filter::Label(label)])
        })?;
        Ok(entries.into_iter().map(|e| e.object_id).collect())
    }

    fn key_info(&self, id: Id) -> Result<KeyInfo, Error> {
        let info = self.with_client("get object info", |c| c.get_object_info(id, Type::AsymmetricKey))?;
        let label = info.label.to_string();
        if info.algorithm != yubihsm::Algorithm::Asymmetric(AsymAlg::EcP256) {
            return Err(Error::UnsupportedKey {
                label,
                detail: format!("algorithm {:?}, need EC P-256", info.algorithm),
            });
        }
        if !info.capabilities.contains(Capability::SIGN_ECDSA) {
            return Err(Error::UnsupportedKey { label, detail: "no sign-ecdsa capability".into() });
        }
        let reasons = protection_faults(info.origin, info.capabilities);
        if !reasons.is_empty() {
            return Err(Error::KeyRefused { label, reasons });
        }
        let public = self.with_client("get public key", |c| c.get_public_key(id))?;
        // The device returns the bare x‖y coordinates.
        let mut sec1 = Vec::with_capacity(65);
        sec1.push(0x04);
        sec1.extend_from_slice(public.as_slice());
        let public_key = p256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| Error::UnsupportedKey {
            label: label.clone(),
            detail: "public key is not a valid P-256 point".into(),
        })?;
        Ok(KeyInfo { label, id: id.to_be_bytes().to_vec(), public_key })
    }

    fn id_for(&self, label: &str) -> Result<Id, Error> {
        if let Some(id) = self.ids.read().ok().and_then(|m| m.get(label).copied()) {
            return Ok(id);
        }
        let info = self.find_key(label)?;
        let bytes: [u8; 2] = info
            .id
            .as_slice()
            .try_into()
            .map_err(|_| Error::Device { op: "find key", rv: "unexpected object id length".into() })?;
        Ok(u16::from_be_bytes(bytes))
    }

    /// A free object id: random, so ids are not predictable, and checked against the device.
    fn free_id(&self) -> Result<Id, Error> {
        for _ in 0..32 {
            let mut b = [0u8; 2];
            aws_lc_rs::rand::fill(&mut b).map_err(|_| Error::Device {
                op: "generate key",
                rv: "no randomness for the object id".into(),
            })?;
            let id = u16::from_be_bytes(b);
            if id == 0 || id == 0xffff {
                continue;
            }
            let used = self.with_client("list objects", |c| {
                c.list_objects(&[Filter::Id(id), Filter::Type(Type::AsymmetricKey)])
            })?;
            if used.is_empty() {
                return Ok(id);
            }
        }
        Err(Error::Refused { op: "generate key", rv: "no free object id found".into() })
    }
}

/// What the store's KEK may do on a YubiHSM2: wrap and unwrap data, nothing else (in
/// particular not export or import other objects under wrap).
const KEK_CAPABILITIES: Capability = Capability::WRAP_DATA.union(Capability::UNWRAP_DATA);

impl YubiHsmBackend {
    /// The KEK's object id, checked: an AES-256 wrap key generated on the device with exactly
    /// wrap-data and unwrap-data, delegating nothing, not exportable under wrap.
    fn kek_id(&self, label: &str) -> Result<Id, Error> {
        let object_label = Label::from_bytes(label.as_bytes()).map_err(|_| Error::InvalidLabel {
            label: label.into(),
            reason: "too long for a YubiHSM label",
        })?;
        let entries = self.with_client("list objects", |c| {
            c.list_objects(&[Filter::Type(Type::WrapKey), Filter::Label(object_label)])
        })?;
        let id = match entries.as_slice() {
            [] => return Err(Error::KekNotFound { label: label.into() }),
            [e] => e.object_id,
            many => return Err(Error::KeyAmbiguous { label: label.into(), count: many.len() }),
        };
        let info = self.with_client("get object info", |c| c.get_object_info(id, Type::WrapKey))?;
        let unsafe_kek = |detail: String| Error::UnsafeKek { label: label.into(), detail };
        if info.algorithm != yubihsm::Algorithm::Wrap(yubihsm::wrap::Algorithm::Aes256Ccm) {
            return Err(unsafe_kek(format!("algorithm {:?}, need AES-256-CCM", info.algorithm)));
        }
        if info.origin != yubihsm::object::Origin::Generated {
            return Err(unsafe_kek(format!("origin {:?}: it must be generated on the device", info.origin)));
        }
        if info.capabilities != KEK_CAPABILITIES {
            return Err(unsafe_kek(format!(
                "capabilities {:?}: exactly wrap-data and unwrap-data",
                info.capabilities
            )));
        }
        if !info.delegated_capabilities.is_empty() {
            return Err(unsafe_kek(format!(
                "delegated capabilities {:?}: none",
                info.delegated_capabilities
            )));
        }
        Ok(id)
    }
}

impl Backend for YubiHsmBackend {
    fn name(&self) -> &'static str {
        "yubihsm"
    }

    fn generate_kek(&self, label: &str) -> Result<(), Error> {
        match self.kek_id(label) {
            Err(Error::KekNotFound { .. }) => {}
            Ok(_) | Err(Error::UnsafeKek { .. }) | Err(Error::KeyAmbiguous { .. }) => {
                return Err(Error::KeyExists { label: label.into() });
            }
            Err(e) => return Err(e),
        }
        let id = self.free_id()?;
        let object_label = Label::from_bytes(label.as_bytes()).map_err(|_| Error::InvalidLabel {
            label: label.into(),
            reason: "too long for a YubiHSM label",
        })?;
        self.with_client("generate wrap key", |c| {
            c.generate_wrap_key(
                id,
                object_label,
                self.domains,
                KEK_CAPABILITIES,
                Capability::empty(),
                yubihsm::wrap::Algorithm::Aes256Ccm,
            )
        })?;
        self.kek_id(label)?;
        log::info!("generated the store's key-encryption key {label:?} in the YubiHSM (object {id:#06x})");
        Ok(())
    }

    fn find_kek(&self, label: &str) -> Result<(), Error> {
        self.kek_id(label).map(|_| ())
    }

    fn wrap_data_key(&self, kek_label: &str, key: &[u8]) -> Result<Vec<u8>, Error> {
        let id = self.kek_id(kek_label)?;
        let message = self.with_client("wrap data", |c| c.wrap_data(id, key.to_vec()))?;
        Ok(message.into_vec())
    }

    fn unwrap_data_key(&self, kek_label: &str, wrapped: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
        let id = self.kek_id(kek_label)?;
        let message = yubihsm::wrap::Message::from_vec(wrapped.to_vec())
            .map_err(|e| Error::Refused { op: "unwrap data", rv: format!("not a wrapped data key: {e}") })?;
        Ok(zeroize::Zeroizing::new(self.with_client("unwrap data", |c| c.unwrap_data(id, message))?))
    }

    fn generate_key(&self, label: &str) -> Result<KeyInfo, Error> {
        if !self.key_entries(label)?.is_empty() {
            return Err(Error::KeyExists { label: label.into() });
        }
        let id = self.free_id()?;
        let object_label = Label::from_bytes(label.as_bytes()).map_err(|_| Error::InvalidLabel {
            label: label.into(),
            reason: "too long for a YubiHSM label",
        })?;
        // sign-ecdsa only, and without exportable-under-wrap: the key never leaves the device.
        self.with_client("generate key", |c| {
            c.generate_asymmetric_key(id, object_label, self.domains, Capability::SIGN_ECDSA, AsymAlg::EcP256)
        })?;
        let info = self.key_info(id)?;
        if let Ok(mut m) = self.ids.write() {
            m.insert(label.to_string(), id);
        }
        log::info!("generated P-256 key {label:?} in the YubiHSM (object {id:#06x})");
        Ok(info)
    }

    fn find_key(&self, label: &str) -> Result<KeyInfo, Error> {
        let ids = self.key_entries(label)?;
        let id = match ids.as_slice() {
            [id] => *id,
            [] => {
                return Err(Error::KeyNotFound { label: label.into() });
            }
            many => {
                return Err(Error::KeyAmbiguous { label: label.into(), count: many.len() });
            }
        };
        let info = self.key_info(id)?;
        if let Ok(mut m) = self.ids.write() {
            m.insert(label.to_string(), id);
        }
        Ok(info)
    }

    fn list_keys(&self) -> Result<Vec<KeyInfo>, Error> {
        let entries = self.with_client("list objects", |c| {
            c.list_objects(&[
                Filter::Type(Type::AsymmetricKey),
                Filter::Algorithm(yubihsm::Algorithm::Asymmetric(AsymAlg::EcP256)),
            ])
        })?;
        let mut out = Vec::new();
        for e in entries {
            match self.key_info(e.object_id) {
                Ok(k) => out.push(k),
                // Not ours to list: other algorithms, and keys it would refuse to sign with.
                Err(Error::UnsupportedKey { .. } | Error::KeyRefused { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.label.cmp(&b.label));
        Ok(out)
    }

    fn sign_digests(&self, label: &str, digests: &[[u8; 32]]) -> Result<Vec<[u8; 64]>, Error> {
        let id = self.id_for(label)?;
        let mut out = Vec::with_capacity(digests.len());
        for d in digests {
            let der = match self.with_client("sign", |c| c.sign_ecdsa_prehash_raw(id, d.to_vec())) {
                Err(Error::KeyNotFound { .. }) => {
                    // Stale id cache (key deleted and recreated): forget it.
                    if let Ok(mut m) = self.ids.write() {
                        m.remove(label);
                    }
                    return Err(Error::KeyNotFound { label: label.into() });
                }
                other => other?,
            };
            let sig = p256::ecdsa::Signature::from_der(&der).map_err(|_| Error::Device {
                op: "sign",
                rv: "the YubiHSM returned a malformed ECDSA signature".into(),
            })?;
            out.push(sig.to_bytes().into());
        }
        Ok(out)
    }

    fn health(&self) -> Result<(), Error> {
        self.with_client("ping", |c| c.ping()).map(|_| ())
    }

    fn report_fault(&self, what: &str) {
        log::warn!("YubiHSM fault: {what}; opening a new session");
        self.faults.fetch_add(1, Ordering::Relaxed);
        // A fresh client authenticates a new session on its next command.
        match Client::create(self.connector.clone(), self.credentials.clone()) {
            Ok(c) => {
                *self.client.lock().unwrap_or_else(|p| p.into_inner()) = c;
                self.reinits.fetch_add(1, Ordering::Relaxed);
                self.pin_attempts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => log::error!("cannot re-create the YubiHSM client: {e}"),
        }
        if let Ok(mut m) = self.ids.write() {
            m.clear();
        }
    }

    fn parallelism(&self) -> usize {
        1
    }

    fn stats(&self) -> BackendStats {
        BackendStats {
            available: true,
            reinits: self.reinits.load(Ordering::Relaxed),
            faults: self.faults.load(Ordering::Relaxed),
            pin_attempts: self.pin_attempts.load(Ordering::Relaxed),
            sessions_open: 1,
            ..BackendStats::default()
        }
    }
}

/// What is wrong with a key object as a signing key of this appliance: it must have been
/// generated on this device (an imported or re-imported key has existed outside it), must not be
/// exportable under wrap, and must only sign. Empty when it is fit.
fn protection_faults(origin: Origin, capabilities: Capability) -> Vec<String> {
    let mut out = Vec::new();
    if origin != Origin::Generated {
        out.push(format!(
            "its origin is {origin:?}, not generated on the device (it may exist outside the HSM)"
        ));
    }
    if capabilities.contains(Capability::EXPORTABLE_UNDER_WRAP) {
        out.push("it has the exportable-under-wrap capability (it can leave the HSM)".into());
    }
    for (cap, name) in [
        (Capability::DERIVE_ECDH, "derive-ecdh"),
        (Capability::DECRYPT_PKCS, "decrypt-pkcs"),
        (Capability::DECRYPT_OAEP, "decrypt-oaep"),
    ] {
        if capabilities.contains(cap) {
            out.push(format!("it has the {name} capability (a signing key must only sign)"));
        }
    }
    out
}

fn domains_from(list: &[u8]) -> Result<Domain, Error> {
    let mut d = Domain::empty();
    for n in list {
        if !(1..=16).contains(n) {
            return Err(Error::Config(format!("YubiHSM domain {n} is not in 1–16")));
        }
        d |= Domain::from_bits_truncate(1 << (n - 1));
    }
    if d.is_empty() {
        return Err(Error::Config("at least one YubiHSM domain is needed".into()));
    }
    Ok(d)
}

fn connector_for(cfg: &YubiHsmConfig) -> Result<Connector, Error> {
    let c = cfg.connector.trim();
    if let Some(rest) = c.strip_prefix("http://") {
        let rest = rest.trim_end_matches('/');
        let (addr, port) = match rest.rsplit_once(':') {
            Some((a, p)) => (
                a.to_string(),
                p.parse::<u16>().map_err(|_| Error::Config(format!("bad port in connector {c:?}")))?,
            ),
            None => (rest.to_string(), 12345),
        };
        if addr.is_empty() {
            return Err(Error::Config(format!("no host in connector {c:?}")));
        }
        return Ok(Connector::http(&yubihsm::HttpConfig { addr, port, timeout_ms: cfg.op_timeout_ms }));
    }
    if c == "usb" || c.starts_with("usb:") {
        return usb_connector(c, cfg.op_timeout_ms);
    }
    Err(Error::Config(format!("connector {c:?} is neither http://HOST:PORT nor usb[:SERIAL]")))
}

#[cfg(feature = "yubihsm-usb")]
fn usb_connector(c: &str, timeout_ms: u64) -> Result<Connector, Error> {
    let serial = match c.strip_prefix("usb:") {
        Some(s) => Some(s.parse().map_err(|_| Error::Config(format!("bad YubiHSM serial in {c:?}")))?),
        None => None,
    };
    Ok(Connector::usb(&yubihsm::UsbConfig { serial, timeout_ms }))
}

#[cfg(not(feature = "yubihsm-usb"))]
fn usb_connector(c: &str, _timeout_ms: u64) -> Result<Connector, Error> {
    Err(Error::Config(format!(
        "connector {c:?}: this build has no USB support; rebuild with --features yubihsm-usb or use yubihsm-connector over http"
    )))
}

/// Maps a yubihsm client error. Authentication failures are PIN-class errors (never retried).
fn map_err(op: &'static str, key_id: u16, e: &yubihsm::client::Error) -> Error {
    use yubihsm::client::ErrorKind as K;
    use yubihsm::device::ErrorKind as D;
    if let Some(d) = e.device_error() {
        return match d {
            D::AuthenticationFailed => Error::AuthFailed { key_id },
            D::ObjectNotFound => Error::KeyNotFound { label: String::new() },
            D::InsufficientPermissions | D::InvalidCommand | D::InvalidData | D::WrongLength => {
                Error::Refused { op, rv: d.to_string() }
            }
            _ => Error::Device { op, rv: d.to_string() },
        };
    }
    match e.kind() {
        K::AuthenticationError => Error::AuthFailed { key_id },
        _ => Error::Device { op, rv: e.to_string().split_whitespace().collect::<Vec<_>>().join(" ") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The KEK on the MockHsm: generated on the device with exactly wrap-data/unwrap-data; an
    /// imported wrap key or one with more capabilities is refused, naming what is wrong. (The
    /// MockHsm implements no Wrap Data / Unwrap Data command, so the round trip itself is
    /// covered on SoftHSM2 only.)
    #[cfg(feature = "yubihsm-mock")]
    #[test]
    fn the_kek_is_generated_on_the_device_wrap_data_only() {
        let connector = Connector::mockhsm();
        let backend =
            YubiHsmBackend::from_connector(connector.clone(), Credentials::default(), 1, Domain::DOM1)
                .unwrap();
        assert!(matches!(backend.find_kek("kek"), Err(Error::KekNotFound { .. })));
        backend.generate_kek("kek").unwrap();
        backend.find_kek("kek").unwrap();
        assert!(matches!(backend.generate_kek("kek"), Err(Error::KeyExists { .. })));
        let client = Client::open(connector, Credentials::default(), true).unwrap();
        let label = |l: &str| Label::from_bytes(l.as_bytes()).unwrap();
        client
            .put_wrap_key(
                0x0a0a,
                label("imported"),
                Domain::DOM1,
                KEK_CAPABILITIES,
                Capability::empty(),
                yubihsm::wrap::Algorithm::Aes256Ccm,
                vec![7u8; 32],
            )
            .unwrap();
        let e = backend.find_kek("imported").unwrap_err();
        assert!(matches!(e, Error::UnsafeKek { .. }) && e.to_string().contains("origin"), "{e}");
        client
            .generate_wrap_key(
                0x0b0b,
                label("exporter"),
                Domain::DOM1,
                KEK_CAPABILITIES | Capability::EXPORT_WRAPPED,
                Capability::empty(),
                yubihsm::wrap::Algorithm::Aes256Ccm,
            )
            .unwrap();
        let e = backend.find_kek("exporter").unwrap_err();
        assert!(matches!(e, Error::UnsafeKek { .. }) && e.to_string().contains("capabilities"), "{e}");
        assert!(backend.wrap_data_key("exporter", &[1; 32]).is_err(), "never used");
    }

    #[test]
    fn connector_strings() {
        let cfg = |c: &str| YubiHsmConfig {
            connector: c.into(),
            auth_key_id: 1,
            password: super::super::PinSource::File("/nonexistent".into()),
            domains: vec![1],
            op_timeout_ms: 1000,
        };
        assert!(connector_for(&cfg("http://127.0.0.1:12345")).is_ok());
        assert!(connector_for(&cfg("http://hsm.local")).is_ok());
        assert!(connector_for(&cfg("http://:1")).is_err());
        assert!(connector_for(&cfg("ftp://x")).is_err());
        #[cfg(not(feature = "yubihsm-usb"))]
        assert!(connector_for(&cfg("usb")).err().is_some_and(|e| e.to_string().contains("yubihsm-usb")));
    }

    #[cfg(feature = "yubihsm-mock")]
    fn mock() -> (YubiHsmBackend, Client) {
        let connector = Connector::mockhsm();
        let creds = Credentials::default();
        let backend =
            YubiHsmBackend::from_connector(connector.clone(), creds.clone(), 1, Domain::DOM1).expect("mock");
        let client = Client::open(connector, creds, true).expect("client");
        (backend, client)
    }

    #[cfg(feature = "yubihsm-mock")]
    #[test]
    fn generated_keys_pass_and_imported_or_exportable_keys_are_refused() {
        let (b, client) = mock();
        b.generate_key("dsc-ok").expect("generate");
        assert_eq!(b.find_key("dsc-ok").expect("find").label, "dsc-ok");

        // Imported from the host: it existed outside the device.
        client
            .put_asymmetric_key(
                0x0101,
                Label::from("dsc-imported"),
                Domain::DOM1,
                Capability::SIGN_ECDSA,
                AsymAlg::EcP256,
                vec![7u8; 32],
            )
            .expect("put");
        let e = b.find_key("dsc-imported").unwrap_err();
        assert!(matches!(e, Error::KeyRefused { .. }), "{e}");
        assert!(e.to_string().contains("origin is Imported, not generated on the device"), "{e}");

        // Generated on the device but exportable under wrap.
        client
            .generate_asymmetric_key(
                0x0102,
                Label::from("dsc-wrappable"),
                Domain::DOM1,
                Capability::SIGN_ECDSA | Capability::EXPORTABLE_UNDER_WRAP,
                AsymAlg::EcP256,
            )
            .expect("generate");
        let e = b.find_key("dsc-wrappable").unwrap_err();
        assert!(e.to_string().contains("exportable-under-wrap"), "{e}");
        assert!(b.sign_digests("dsc-wrappable", &[[1; 32]]).is_err());
        // Neither is listed as a key of ours.
        let labels: Vec<String> = b.list_keys().expect("list").into_iter().map(|k| k.label).collect();
        assert_eq!(labels, vec!["dsc-ok".to_owned()]);
    }

    #[test]
    fn domains() {
        assert_eq!(domains_from(&[1, 3]).ok(), Some(Domain::DOM1 | Domain::DOM3));
        assert!(domains_from(&[0]).is_err());
        assert!(domains_from(&[]).is_err());
    }
}
