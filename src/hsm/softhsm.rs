//! Fresh SoftHSM2 tokens for development (`dev-init`), the integration tests and the bench.
//!
//! SoftHSM reads its configuration from `$SOFTHSM2_CONF` when the module is initialised, so the
//! process that later opens the token must be started with `SOFTHSM2_CONF` pointing at the file
//! returned here (the crate forbids `unsafe`, and `std::env::set_var` is unsafe: re-executing
//! with the variable set, as the tests and the bench do, is the safe way).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::Error;

/// Where Debian/Ubuntu install the SoftHSM2 PKCS#11 module.
pub const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Writes `dir/softhsm2.conf` with a private token directory `dir/tokens` (file object store)
/// and returns the path of the conf file.
pub fn write_conf(dir: &Path) -> Result<PathBuf, Error> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io =
        |what: &str, e: std::io::Error| Error::Tool { tool: "softhsm setup", detail: format!("{what}: {e}") };
    let tokens = dir.join("tokens");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&tokens)
        .map_err(|e| io(&tokens.display().to_string(), e))?;
    let conf = dir.join("softhsm2.conf");
    // The token directory must be absolute: SoftHSM resolves it against its own cwd otherwise.
    let tokens = std::path::absolute(&tokens).map_err(|e| io("absolute path", e))?;
    let text = format!(
        "# SoftHSM2 configuration written by hcert-signer for a development/test token.\n\
         directories.tokendir = {}\n\
         objectstore.backend = file\n\
         log.level = ERROR\n\
         slots.removable = false\n",
        tokens.display()
    );
    std::fs::write(&conf, text).map_err(|e| io(&conf.display().to_string(), e))?;
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io(&conf.display().to_string(), e))?;
    Ok(conf)
}

/// Creates a fresh SoftHSM2 token labelled `label` under `dir` (see [`write_conf`]) with the
/// given SO-PIN and user PIN, and returns the path of its `softhsm2.conf`.
///
/// This runs `softhsm2-util --init-token`, which only takes the PINs on its command line, where
/// other local users could see them while it runs: fine for development and test tokens, never
/// for production ones (see hsm-config/PROVISIONING.md).
pub fn init_token(dir: &Path, label: &str, so_pin: &str, user_pin: &str) -> Result<PathBuf, Error> {
    if label.is_empty() || label.len() > 32 {
        return Err(Error::Config("a token label is 1–32 bytes".into()));
    }
    for (what, pin) in [("SO-PIN", so_pin), ("user PIN", user_pin)] {
        if pin.len() < 4 || pin.len() > 255 || pin.contains(['\n', '\0']) {
            return Err(Error::Config(format!(
                "the {what} must be 4–255 characters on one line (SoftHSM's limits)"
            )));
        }
    }
    let conf = write_conf(dir)?;
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", label])
        .arg("--so-pin")
        .arg(so_pin)
        .arg("--pin")
        .arg(user_pin)
        .output()
        .map_err(|e| Error::Tool {
            tool: "softhsm2-util",
            detail: format!("cannot run it ({e}); install the softhsm2 package"),
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let text = format!("{} {}", stdout.trim(), stderr.trim());
        // softhsm2-util does not echo PINs, but scrub them anyway before they reach a log.
        let text = text.replace(so_pin, "<so-pin>").replace(user_pin, "<pin>");
        return Err(Error::Tool {
            tool: "softhsm2-util",
            detail: format!("{}: {}", out.status, text.replace('\n', " ")),
        });
    }
    Ok(conf)
}

/// A second, raw cryptoki handle on `module` and the slot of the token labelled `token_label`,
/// for tools and tests that must look at the token behind the pool's back (the bench's raw
/// `C_Sign` rate, the load tool, attribute checks). `C_Initialize` may already have been called
/// by an [`Hsm`](super::Hsm) in the same process; that is accepted.
pub fn raw_slot(
    module: &Path,
    token_label: &str,
) -> Result<(cryptoki::context::Pkcs11, cryptoki::slot::Slot), Error> {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    let tool = |detail: String| Error::Tool { tool: "raw PKCS#11 handle", detail };
    let raw = Pkcs11::new(module).map_err(|e| tool(format!("{}: {e}", module.display())))?;
    match raw.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(tool(format!("C_Initialize: {e}"))),
    }
    let slot = raw
        .get_slots_with_token()
        .map_err(|e| tool(format!("C_GetSlotList: {e}")))?
        .into_iter()
        .find(|s| raw.get_token_info(*s).is_ok_and(|t| t.label() == token_label))
        .ok_or_else(|| tool(format!("no token labelled {token_label:?}")))?;
    Ok((raw, slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_points_at_private_token_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = write_conf(dir.path()).expect("conf");
        let text = std::fs::read_to_string(&conf).expect("read");
        assert!(text.contains("objectstore.backend = file"));
        let tokens = std::path::absolute(dir.path().join("tokens")).expect("abs");
        assert!(text.contains(&format!("directories.tokendir = {}", tokens.display())));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("tokens")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn short_pins_are_refused_before_running_anything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = init_token(dir.path(), "t", "1", "123456").expect_err("short so-pin");
        assert!(e.to_string().contains("SO-PIN"), "{e}");
        assert!(!dir.path().join("softhsm2.conf").exists());
    }
}
