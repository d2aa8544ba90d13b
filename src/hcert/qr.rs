//! QR codes for `HC1:` strings: alphanumeric mode, error-correction level Q (HCERT §4.5).

use qrcode::bits::Bits;
use qrcode::{EcLevel, QrCode, Version};

use super::Error;

/// The most alphanumeric characters a QR code holds at level Q (version 40).
pub const CAPACITY_Q: usize = 2420;

/// QR's alphanumeric character set, which is also the Base45 alphabet.
const ALPHANUMERIC: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";

/// Encodes `hc1` in one alphanumeric segment at level Q, in the smallest version that holds it.
///
/// The Base45 alphabet is exactly QR's alphanumeric set, so a single segment is also the
/// densest encoding; anything outside that set (lower-case, a stray newline) is refused.
pub fn encode(hc1: &str) -> Result<QrCode, Error> {
    let data = hc1.as_bytes();
    if let Some(bad) = data.iter().find(|b| !ALPHANUMERIC.contains(b)) {
        return Err(Error::structure(
            "QR code",
            format!("byte 0x{bad:02x} is outside the QR alphanumeric set (not Base45 text)"),
        ));
    }
    if data.len() > CAPACITY_Q {
        return Err(Error::structure(
            "QR code",
            format!("{} characters exceed the level-Q capacity of {CAPACITY_Q}", data.len()),
        ));
    }
    let mut last = None;
    for v in 1..=40 {
        let mut bits = Bits::new(Version::Normal(v));
        let fits = bits.push_alphanumeric_data(data).and_then(|()| bits.push_terminator(EcLevel::Q));
        match fits {
            Ok(()) => {
                return QrCode::with_bits(bits, EcLevel::Q).map_err(|e| Error::structure("QR code", e));
            }
            Err(e @ qrcode::types::QrError::DataTooLong) => last = Some(e),
            Err(e) => return Err(Error::structure("QR code", e)),
        }
    }
    Err(Error::structure("QR code", last.map_or_else(String::new, |e| e.to_string())))
}

/// The QR code as an SVG document, `module_px` pixels per module, with the quiet zone.
pub fn to_svg(code: &QrCode, module_px: u32) -> String {
    code.render::<qrcode::render::svg::Color<'_>>().module_dimensions(module_px, module_px).build()
}

/// The QR code as a PNG image, `module_px` pixels per module, with the quiet zone.
pub fn to_png(code: &QrCode, module_px: u32) -> Result<Vec<u8>, Error> {
    let img = code.render::<image::Luma<u8>>().module_dimensions(module_px, module_px).build();
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::structure("PNG", e))?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphanumeric_level_q() {
        let code = encode("HC1:NCFOXN%TS3DH3ZSUZK+.V0ETD%65NL-AH").unwrap();
        assert_eq!(code.error_correction_level(), EcLevel::Q);
        assert!(to_svg(&code, 4).starts_with("<?xml"));
        assert!(to_png(&code, 2).unwrap().starts_with(b"\x89PNG"));
    }

    #[test]
    fn refuses_what_is_not_base45_or_too_long() {
        assert!(encode("hc1:lower").is_err());
        assert!(encode(&"A".repeat(CAPACITY_Q + 1)).is_err());
        assert!(encode(&"A".repeat(CAPACITY_Q)).is_ok());
    }
}
