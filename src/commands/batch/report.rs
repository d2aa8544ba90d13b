//! What a submit leaves behind: every result line in file order, `rejected.csv` for the clerk
//! who fixes the records, one QR code per signed record, and the summary by code.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::input::Rejection;
use crate::{Error, Result};

/// One result line of the appliance, as it came and as read.
#[derive(Debug)]
pub struct ResultLine {
    /// The line as the appliance sent it (written unchanged).
    pub line: String,
    /// Its `ref`.
    pub r#ref: String,
    /// The HC1 string of a signed record.
    pub hc1: Option<String>,
    /// The rejection of a rejected record.
    pub rejection: Option<Rejection>,
}

impl ResultLine {
    /// Reads one NDJSON line of `GET /v1/batches/{id}/results`.
    pub fn parse(line: &str) -> Result<ResultLine> {
        let bad =
            |why: &str| Error::Io(std::io::Error::other(format!("the appliance sent a result line {why}")));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|_| bad("that is not JSON"))?;
        let r#ref = v["ref"].as_str().ok_or_else(|| bad("without a ref"))?.to_owned();
        let (hc1, rejection) = match v["status"].as_str() {
            Some("signed") => (Some(v["hc1"].as_str().ok_or_else(|| bad("without hc1"))?.to_owned()), None),
            Some("rejected") => {
                let code = v["error"]["code"].as_str().unwrap_or("unknown").to_owned();
                let message = v["error"]["message"].as_str().unwrap_or("").to_owned();
                let field = field_of(&message).to_owned();
                (None, Some(Rejection { r#ref: r#ref.clone(), code, field, message }))
            }
            _ => return Err(bad("with an unknown status")),
        };
        Ok(ResultLine { line: line.trim_end().to_owned(), r#ref, hc1, rejection })
    }

    /// The result line of a record refused before it was sent, in the appliance's format.
    pub fn local(r: &Rejection) -> ResultLine {
        let line = serde_json::json!({
            "ref": r.r#ref,
            "status": "rejected",
            "error": {"code": r.code, "message": r.message},
        })
        .to_string();
        ResultLine { line, r#ref: r.r#ref.clone(), hc1: None, rejection: Some(r.clone()) }
    }
}

/// The field an appliance message names: its messages are `PATH: what is wrong`
/// (`v[0].mp: unknown medicinal product "X"`); a message without such a path names none.
pub fn field_of(message: &str) -> &str {
    match message.split_once(": ") {
        Some((path, _)) if !path.is_empty() && !path.contains(char::is_whitespace) => path,
        _ => "",
    }
}

/// Writes the outputs of one submit as results come in.
pub struct Report {
    out: PathBuf,
    partial: PathBuf,
    results: BufWriter<File>,
    rejected_path: PathBuf,
    rejected: BufWriter<File>,
    qr_dir: Option<PathBuf>,
    qr_names: HashSet<String>,
    /// Rejections by code.
    pub by_code: BTreeMap<String, u64>,
    /// Records signed.
    pub signed: u64,
    written: u64,
}

/// A UTF-8 byte order mark. rejected.csv starts with one: Excel opens a CSV file without it in
/// the machine's legacy code page, which mangles every accented name and message (Vietnamese
/// above all); with it, Excel, LibreOffice and Numbers all read UTF-8, and tools that do not
/// expect it see one invisible character in the first header.
const BOM: &str = "\u{feff}";

impl Report {
    /// Creates the outputs: results to `out` (written as `out.partial` and renamed when
    /// complete, so a cut run never leaves a file that looks whole), `rejected.csv` beside it.
    pub fn create(out: &Path, qr_dir: Option<&Path>) -> Result<Report> {
        let partial = PathBuf::from(format!("{}.partial", out.display()));
        let results = BufWriter::new(File::create(&partial).map_err(Error::file(&partial))?);
        let rejected_path = out.with_file_name("rejected.csv");
        let mut rejected = BufWriter::new(File::create(&rejected_path).map_err(Error::file(&rejected_path))?);
        write!(rejected, "{BOM}ref,code,field,message\r\n").map_err(Error::file(&rejected_path))?;
        if let Some(d) = qr_dir {
            std::fs::create_dir_all(d).map_err(Error::file(d))?;
        }
        Ok(Report {
            out: out.to_owned(),
            partial,
            results,
            rejected_path,
            rejected,
            qr_dir: qr_dir.map(Path::to_owned),
            qr_names: HashSet::new(),
            by_code: BTreeMap::new(),
            signed: 0,
            written: 0,
        })
    }

    /// Writes one record's result (its QR code, its rejection row).
    pub fn write(&mut self, result: &ResultLine) -> Result<()> {
        self.written += 1;
        writeln!(self.results, "{}", result.line).map_err(Error::file(&self.partial))?;
        if let Some(r) = &result.rejection {
            *self.by_code.entry(r.code.clone()).or_default() += 1;
            let row = [&r.r#ref, &r.code, &r.field, &r.message].map(|c| csv_cell(c)).join(",");
            write!(self.rejected, "{row}\r\n").map_err(Error::file(&self.rejected_path))?;
        }
        if let Some(hc1) = &result.hc1 {
            self.signed += 1;
            if let Some(dir) = &self.qr_dir {
                let name = qr_name(&result.r#ref, self.written, &mut self.qr_names);
                let path = dir.join(name);
                let code = crate::hcert::qr::encode(hc1)?;
                std::fs::write(&path, crate::hcert::qr::to_png(&code, 4)?).map_err(Error::file(&path))?;
            }
        }
        Ok(())
    }

    /// Flushes everything and puts the results file in place; returns (results, rejected.csv).
    pub fn finish(mut self) -> Result<(PathBuf, PathBuf)> {
        self.results.flush().map_err(Error::file(&self.partial))?;
        self.rejected.flush().map_err(Error::file(&self.rejected_path))?;
        std::fs::rename(&self.partial, &self.out).map_err(Error::file(&self.out))?;
        Ok((self.out, self.rejected_path))
    }

    /// Records rejected.
    pub fn rejected(&self) -> u64 {
        self.by_code.values().sum()
    }
}

/// One CSV cell (RFC 4180): quoted when it holds a comma, a quote or a line break. A cell that
/// a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR first) gets a leading `'`,
/// as OWASP advises: refs and messages come from the issuer's file, and a clerk opens this.
pub fn csv_cell(text: &str) -> String {
    let guarded =
        if text.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{text}") } else { text.to_owned() };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

/// The PNG file name of a signed record: its ref with anything but `A-Za-z0-9._-` made `_`, or
/// its position in the file when that leaves nothing usable or repeats an earlier name.
pub fn qr_name(r#ref: &str, position: u64, used: &mut HashSet<String>) -> String {
    let clean: String = r#ref
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    let mut name = if clean.is_empty() || clean.starts_with('.') || clean.len() > 120 {
        format!("record-{position}")
    } else {
        clean
    };
    if !used.insert(name.clone()) {
        name = format!("{name}-{position}");
        used.insert(name.clone());
    }
    format!("{name}.png")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_quoted_as_rfc_4180_says_and_formulas_are_defused() {
        assert_eq!(csv_cell("VN-0001"), "VN-0001");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_cell("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("-1"), "'-1");
        assert_eq!(csv_cell("Trần"), "Trần");
    }

    #[test]
    fn the_field_is_the_path_an_appliance_message_starts_with() {
        assert_eq!(field_of("v[0].mp: unknown medicinal product \"X\""), "v[0].mp");
        assert_eq!(field_of("dob: not a date"), "dob");
        assert_eq!(field_of("no key can sign: none active"), "");
        assert_eq!(field_of("plain message"), "");
    }

    #[test]
    fn qr_file_names_are_safe_and_distinct() {
        let mut used = HashSet::new();
        assert_eq!(qr_name("VN-0001", 1, &mut used), "VN-0001.png");
        assert_eq!(qr_name("../etc/x", 2, &mut used), "record-2.png");
        assert_eq!(qr_name("a/b", 3, &mut used), "a_b.png");
        assert_eq!(qr_name("a:b", 4, &mut used), "a_b-4.png");
        assert_eq!(qr_name("", 5, &mut used), "record-5.png");
    }

    #[test]
    fn result_lines_are_read_with_their_rejection() {
        let r = ResultLine::parse(
            r#"{"ref":"x","status":"rejected","error":{"code":"schema","message":"dob: not a date"}}"#,
        )
        .unwrap();
        let rej = r.rejection.unwrap();
        assert_eq!((rej.r#ref.as_str(), rej.code.as_str(), rej.field.as_str()), ("x", "schema", "dob"));
        let s = ResultLine::parse(r#"{"ref":"y","status":"signed","hc1":"HC1:abc"}"#).unwrap();
        assert_eq!(s.hc1.as_deref(), Some("HC1:abc"));
        assert!(ResultLine::parse(r#"{"ref":"y","status":"other"}"#).is_err());
    }
}
