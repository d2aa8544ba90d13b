//! Development PKI for `dev-init` and the tests: a CSCA that certifies DSCs from their CSRs, and
//! a TLS CA for the server and client certificates.
//!
//! Never for production: these CA keys are software keys written to disk. A real CSCA is
//! offline and signs the CSR that `hcert-signer keys csr` exports.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::Error;
use crate::hcert::CertificateType;

fn gen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
    move |e| Error::Generate { what, detail: e.to_string() }
}

/// The OID of the HCERT extended key usage for a certificate type.
pub fn eku_oid(kind: CertificateType) -> Vec<u64> {
    let last = match kind {
        CertificateType::Test => 1,
        CertificateType::Vaccination => 2,
        CertificateType::Recovery => 3,
    };
    vec![1, 3, 6, 1, 4, 1, 1847, 2021, 1, last]
}

/// A random positive 16-byte serial number (RFC 5280 allows up to 20 octets).
fn serial() -> Result<SerialNumber, Error> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| Error::Generate { what: "serial number", detail: "no randomness".into() })?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

/// A development certificate authority: its certificate and software key.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl DevCa {
    /// A new self-signed P-256 CA named `C=country, O=organisation, CN=common_name`, valid for
    /// `years` from an hour ago.
    pub fn new(country: &str, organisation: &str, common_name: &str, years: i64) -> Result<DevCa, Error> {
        let now = OffsetDateTime::now_utc();
        Self::new_valid(
            country,
            organisation,
            common_name,
            now - Duration::hours(1),
            now + Duration::days(365 * years),
        )
    }

    /// A new self-signed P-256 CA named `C=country, O=organisation, CN=common_name`, valid from
    /// `not_before` to `not_after`.
    pub fn new_valid(
        country: &str,
        organisation: &str,
        common_name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<DevCa, Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err("CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(country, organisation, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(serial()?);
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key).map_err(gen_err("CA certificate"))?;
        Ok(DevCa { cert_pem: cert.pem(), key_pem: key.serialize_pem(), issuer: Issuer::new(params, key) })
    }

    /// Loads a CA written earlier (e.g. `DIR/csca.pem` and `DIR/csca.key`).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<DevCa, Error> {
        let key = KeyPair::from_pem(key_pem).map_err(gen_err("CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(gen_err("CA certificate"))?;
        Ok(DevCa { issuer, cert_pem: cert_pem.to_owned(), key_pem: key_pem.to_owned() })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM (write it with mode 0600).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Certifies a DSC from its CSR (signature checked), keeping the CSR's subject. `types`
    /// restricts the certificate types through the HCERT EKUs (`None`: all types).
    pub fn certify_dsc(
        &self,
        csr_pem: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        types: Option<&[CertificateType]>,
    ) -> Result<String, Error> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(gen_err("DSC from CSR"))?;
        let p = &mut csr.params;
        p.not_before = not_before;
        p.not_after = not_after;
        p.serial_number = Some(serial()?);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages =
            types.unwrap_or_default().iter().map(|t| ExtendedKeyUsagePurpose::Other(eku_oid(*t))).collect();
        p.use_authority_key_identifier_extension = true;
        Ok(csr.signed_by(&self.issuer).map_err(gen_err("DSC certificate"))?.pem())
    }

    /// A TLS server certificate for `names` (DNS names or IP addresses) with a new key.
    pub fn issue_server(&self, common_name: &str, names: &[&str]) -> Result<Issued, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn_cn(common_name);
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.to_string().try_into().map(SanType::DnsName).map_err(gen_err("server name")),
            })
            .collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        self.issue_leaf(params, now - Duration::hours(1), now + Duration::days(825))
    }

    /// A TLS client certificate whose subject CN is `common_name`, with a new key, valid for
    /// `days` from an hour ago.
    pub fn issue_client(&self, common_name: &str, days: i64) -> Result<Issued, Error> {
        let now = OffsetDateTime::now_utc();
        self.issue_client_valid(common_name, now - Duration::hours(1), now + Duration::days(days))
    }

    /// A TLS client certificate whose subject CN is `common_name`, with a new key, valid from
    /// `not_before` to `not_after` — which may both lie in the past or in the future (for tests
    /// of expired and not-yet-valid client certificates).
    pub fn issue_client_valid(
        &self,
        common_name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn_cn(common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue_leaf(params, not_before, not_after)
    }

    fn issue_leaf(
        &self,
        mut params: CertificateParams,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued, Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err("key"))?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(serial()?);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err("certificate"))?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn dn(country: &str, organisation: &str, common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    // RFC 5280: countryName is a PrintableString (rcgen would write a UTF8String from a &str).
    match rcgen::string::PrintableString::try_from(country) {
        Ok(c) => dn.push(DnType::CountryName, DnValue::PrintableString(c)),
        Err(_) => dn.push(DnType::CountryName, country),
    }
    dn.push(DnType::OrganizationName, organisation);
    dn.push(DnType::CommonName, common_name);
    dn
}

fn dn_cn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csca_country_is_a_printable_string() {
        let ca = DevCa::new("VN", "Ministry", "CSCA VN DEV", 1).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let c = cert.subject().iter_country().next().unwrap();
        assert_eq!(c.attr_value().tag(), x509_parser::der_parser::asn1_rs::Tag::PrintableString);
        assert_eq!(c.as_str().unwrap(), "VN");
    }
}
