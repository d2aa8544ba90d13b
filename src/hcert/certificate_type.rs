//! The kind of certificate a DCC is, apart from the payload so that the payload's rules
//! (`validate`) and its types (`dcc`) both use it without depending on each other.

use std::fmt;

/// The kind of certificate: which of the groups `v`, `t`, `r` the DCC holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertificateType {
    /// `v`: a vaccination.
    Vaccination,
    /// `t`: a test.
    Test,
    /// `r`: a recovery.
    Recovery,
}

impl CertificateType {
    /// `vaccination`, `test` or `recovery` (for logs, metrics and reports).
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateType::Vaccination => "vaccination",
            CertificateType::Test => "test",
            CertificateType::Recovery => "recovery",
        }
    }

    /// Same as [`as_str`](Self::as_str).
    pub fn name(self) -> &'static str {
        self.as_str()
    }

    /// The payload key of the group: `v`, `t` or `r`.
    pub fn group_key(self) -> &'static str {
        match self {
            CertificateType::Vaccination => "v",
            CertificateType::Test => "t",
            CertificateType::Recovery => "r",
        }
    }
}

impl fmt::Display for CertificateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
