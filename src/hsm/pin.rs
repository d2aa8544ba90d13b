//! Where the HSM user PIN (or YubiHSM password) comes from, and how it is held in memory.
//!
//! The PIN is only ever read from a file or from a systemd credential
//! (`LoadCredential=` → `$CREDENTIALS_DIRECTORY/<name>`), never from argv or from the contents of
//! an environment variable, and it lives in a `secrecy` box that is zeroed on drop and whose
//! `Debug` is redacted. No error built here contains the PIN.

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::Error;

/// Where to read a PIN or password from (`pin = { file = "…" }` or `pin = { credential = "…" }`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PinSource {
    /// A file holding the PIN (a trailing newline is ignored). It must not be readable by other
    /// users.
    File(PathBuf),
    /// A systemd credential: the file `$CREDENTIALS_DIRECTORY/<name>`, as set up by
    /// `LoadCredential=<name>:…` or `LoadCredentialEncrypted=` in the unit.
    Credential(String),
}

/// A PIN or password held in zeroing, redacted storage.
#[derive(Clone)]
pub struct Pin(SecretString);

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

impl Pin {
    /// Wraps a PIN that is already in memory (tests and `dev-init`, which generate the PIN).
    pub fn new(pin: impl Into<String>) -> Pin {
        Pin(SecretString::from(pin.into()))
    }

    /// The PIN as cryptoki's `AuthPin` (the same `secrecy` type, so no unprotected copy is made
    /// beyond the clone).
    pub(crate) fn auth_pin(&self) -> cryptoki::types::AuthPin {
        SecretString::from(self.0.expose_secret())
    }

    /// The PIN bytes, for APIs that take a byte slice (the YubiHSM password derivation).
    pub(crate) fn expose_bytes(&self) -> &[u8] {
        self.0.expose_secret().as_bytes()
    }
}

impl PinSource {
    /// Reads the PIN. The error names the source, never its contents.
    pub fn load(&self) -> Result<Pin, Error> {
        match self {
            PinSource::File(path) => read_pin_file(path),
            PinSource::Credential(name) => {
                if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0')
                {
                    return Err(Error::PinSource {
                        source_desc: format!("credential {name:?}"),
                        detail: "a credential name is a plain file name (no '/')".into(),
                    });
                }
                let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
                    return Err(Error::PinSource {
                        source_desc: format!("credential {name:?}"),
                        detail: "$CREDENTIALS_DIRECTORY is not set; add LoadCredential=<name>:<file> \
                                 to the systemd unit, or use pin = { file = \"…\" }"
                            .into(),
                    });
                };
                // systemd makes credential files readable by the service only, so the same
                // "not readable by others" check applies.
                read_pin_file(&Path::new(&dir).join(name))
            }
        }
    }

    /// A description of the source for messages (no secret in it).
    pub fn describe(&self) -> String {
        match self {
            PinSource::File(path) => format!("file {}", path.display()),
            PinSource::Credential(name) => format!("systemd credential {name:?}"),
        }
    }
}

/// Reads a PIN file: refuses a file other users can read, strips one trailing newline, refuses
/// an empty PIN or one with interior line breaks (a sign of the wrong file).
fn read_pin_file(path: &Path) -> Result<Pin, Error> {
    let err = |detail: String| Error::PinSource { source_desc: format!("file {}", path.display()), detail };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(err(format!("readable by other users (mode {mode:04o}); run chmod 0600 on it")));
        }
    }
    if meta.len() > 4096 {
        return Err(err("larger than 4 KiB, this is not a PIN file".into()));
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| err(e.to_string()))?);
    let text = std::str::from_utf8(&bytes).map_err(|_| err("not UTF-8 text".into()))?;
    let text = text.strip_suffix("\r\n").or_else(|| text.strip_suffix('\n')).unwrap_or(text);
    if text.is_empty() {
        return Err(err("empty".into()));
    }
    if text.contains(['\n', '\r']) {
        return Err(err("contains more than one line; it must hold only the PIN".into()));
    }
    Ok(Pin(SecretString::from(text)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).expect("write test file");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    #[test]
    fn file_pin_strips_one_newline_and_is_redacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), "pin", "12 34\n", 0o600);
        let pin = PinSource::File(p).load().expect("load");
        assert_eq!(pin.expose_bytes(), b"12 34");
        assert_eq!(format!("{pin:?}"), "Pin(<redacted>)");
    }

    #[test]
    fn world_readable_empty_and_multiline_files_are_refused_without_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), "pin", "secret-pin\n", 0o644);
        let e = PinSource::File(p).load().expect_err("must refuse 0644");
        let msg = e.to_string();
        assert!(msg.contains("chmod 0600"), "{msg}");
        assert!(!msg.contains("secret-pin"), "{msg}");
        let p = write(dir.path(), "empty", "\n", 0o600);
        assert!(PinSource::File(p).load().is_err());
        let p = write(dir.path(), "two", "secret-pin\nother\n", 0o600);
        let msg = PinSource::File(p).load().expect_err("two lines").to_string();
        assert!(!msg.contains("secret-pin"), "{msg}");
    }

    #[test]
    fn credential_names_cannot_escape_the_directory() {
        for bad in ["", "../pin", "a/b", ".."] {
            let e = PinSource::Credential(bad.into()).load().expect_err(bad);
            assert!(e.to_string().contains("credential"), "{e}");
        }
    }

    #[test]
    fn pin_source_deserialises_from_toml() {
        #[derive(Deserialize)]
        struct T {
            pin: PinSource,
        }
        let t: T = toml::from_str("pin = { file = \"/etc/x\" }").expect("file");
        assert_eq!(t.pin, PinSource::File("/etc/x".into()));
        let t: T = toml::from_str("pin = { credential = \"hsm-pin\" }").expect("cred");
        assert_eq!(t.pin, PinSource::Credential("hsm-pin".into()));
        assert!(toml::from_str::<T>("pin = { env = \"PIN\" }").is_err());
    }
}
