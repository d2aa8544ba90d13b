//! `hcert-signer qr`: renders an `HC1:` string as a QR code, so people can look at what they issue.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::hcert::qr;
use crate::{Error, Result};

/// Arguments of `qr`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the image; `.png` or `.svg` picks the format.
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
    /// The HC1 string; read from stdin when absent.
    pub hc1: Option<String>,
    /// Pixels per QR module.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub scale: u32,
}

/// Writes the QR code of one HC1 string.
pub fn run(args: Args) -> Result<ExitCode> {
    let hc1 = match args.hc1 {
        Some(s) => s,
        None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
    };
    let code = qr::encode(hc1.trim())?;
    let ext = args.output.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let bytes = match ext.as_deref() {
        Some("svg") => qr::to_svg(&code, args.scale).into_bytes(),
        Some("png") => qr::to_png(&code, args.scale)?,
        _ => {
            return Err(Error::Config(format!(
                "{}: the output file must end in .png or .svg",
                args.output.display()
            )));
        }
    };
    std::fs::write(&args.output, bytes).map_err(Error::file(&args.output))?;
    Ok(ExitCode::SUCCESS)
}
