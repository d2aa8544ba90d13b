//! Reading an issuer's file of records (JSON or NDJSON) and cutting it into the chunks that
//! become batches: each record checked only as far as the API would refuse the whole batch for
//! it (no ref, a duplicate ref, not JSON), so one bad line never stops the rest.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::api::routes::MAX_REF_LEN;
use crate::{Error, Result};

/// A record refused here, before it reaches the appliance, reported like the appliance's own
/// rejections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The record's `ref`, or where it is in the file (`line 7`, `record 7`) when it has none.
    pub r#ref: String,
    /// A stable code, as the appliance's (`not_json`, `no_ref`, …).
    pub code: String,
    /// The field concerned (`ref`, `dcc`), empty for the whole record.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// One record of the file, in file order.
#[derive(Debug)]
pub enum Entry {
    /// Sent to the appliance: its ref and its JSON text (`{"ref":…,"dcc":…}`).
    Send {
        /// The record's ref.
        r#ref: String,
        /// The record as the API takes it.
        json: String,
    },
    /// Refused here.
    Local(Rejection),
}

/// Consecutive records of the file that make one batch (plus the records refused here among
/// them, which keep their place in the output).
#[derive(Debug)]
pub struct Chunk {
    /// The chunk's position among the file's batches (0-based).
    pub index: usize,
    /// Its records in file order.
    pub entries: Vec<Entry>,
}

impl Chunk {
    /// How many of its records go to the appliance.
    pub fn records(&self) -> usize {
        self.entries.iter().filter(|e| matches!(e, Entry::Send { .. })).count()
    }

    /// The body of `POST /v1/batches` for this chunk.
    pub fn body(&self, idempotency_key: &str) -> Vec<u8> {
        let mut out = String::with_capacity(self.entries.len() * 700 + 200);
        out.push_str("{\"idempotency_key\":");
        out.push_str(&serde_json::to_string(idempotency_key).unwrap_or_default());
        out.push_str(",\"records\":[");
        let mut first = true;
        for e in &self.entries {
            if let Entry::Send { json, .. } = e {
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str(json);
            }
        }
        out.push_str("]}");
        out.into_bytes()
    }
}

/// The file's formats, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"records":[…]}` as the API takes it, or a bare array of records.
    Json,
    /// One record per line.
    Ndjson,
}

impl Format {
    /// `.json` or `.ndjson` (also `.jsonl`).
    pub fn of(path: &Path) -> Result<Format> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("json") => Ok(Format::Json),
            Some("ndjson" | "jsonl") => Ok(Format::Ndjson),
            _ => Err(Error::Config(format!(
                "{}: the file must end in .json ({{\"records\":[…]}} or an array) or .ndjson (one record per line)",
                path.display()
            ))),
        }
    }
}

/// Where a record comes from and its text (or why there is none).
struct Raw {
    /// `line N` or `record N`, for a record without a ref.
    locator: String,
    text: std::result::Result<String, String>,
}

enum Source {
    Json { records: std::vec::IntoIter<Box<RawValue>>, n: usize },
    Ndjson { reader: BufReader<File>, line: usize },
}

impl Source {
    fn next_raw(&mut self, path: &Path) -> Result<Option<Raw>> {
        match self {
            Source::Json { records, n } => Ok(records.next().map(|r| {
                *n += 1;
                Raw { locator: format!("record {n}"), text: Ok(r.get().to_owned()) }
            })),
            Source::Ndjson { reader, line } => loop {
                let mut buf = Vec::new();
                if reader.read_until(b'\n', &mut buf).map_err(Error::file(path))? == 0 {
                    return Ok(None);
                }
                *line += 1;
                // Blank as the first pass counts them (ASCII whitespace only).
                if buf.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let text = match String::from_utf8(buf) {
                    Ok(t) => t,
                    Err(_) => {
                        return Ok(Some(Raw {
                            locator: format!("line {line}"),
                            text: Err("the line is not UTF-8".into()),
                        }));
                    }
                };
                return Ok(Some(Raw { locator: format!("line {line}"), text: Ok(text) }));
            },
        }
    }
}

/// The file opened for reading: its digest and size known, its chunks read one by one.
pub struct Input {
    /// SHA-256 of the file's bytes, hex: names its batches (see [`Input::idempotency_key`]).
    pub digest: String,
    /// How many records the file holds (non-blank lines of NDJSON).
    pub total: usize,
    path: std::path::PathBuf,
    source: Source,
    /// The refs met so far, as the first 16 bytes of their SHA-256: a city's 4.5 million refs
    /// in about 150 MB rather than half a gigabyte of strings (a false duplicate needs a
    /// 128-bit collision).
    seen: HashSet<[u8; 16]>,
    next_index: usize,
    pending: Option<Entry>,
    batch_records: usize,
    body_budget: usize,
    done: bool,
}

/// The largest body sent: the appliance's default limit (16 MiB) less room for the envelope.
pub const BODY_BUDGET: usize = (16 << 20) - (64 << 10);

/// `{"records":[…]}` as the API takes it (an `idempotency_key` in it is ignored: each chunk
/// gets its own). Not an untagged enum with the bare array: serde's buffering for untagged
/// enums cannot hand out raw JSON text.
#[derive(Deserialize)]
struct Envelope {
    records: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Record<'a> {
    #[serde(rename = "ref")]
    r#ref: Option<String>,
    #[serde(borrow)]
    dcc: Option<&'a RawValue>,
}

impl Input {
    /// Opens `path`; a file that cannot be read as a whole (missing, empty, a JSON file that is
    /// not JSON or has no `records`) is a configuration error that names it.
    pub fn open(path: &Path, batch_records: usize, body_budget: usize) -> Result<Input> {
        let format = Format::of(path)?;
        let bad = |why: String| Error::Config(format!("{}: {why}", path.display()));
        let mut file = File::open(path).map_err(Error::file(path))?;
        let (digest, total, source) = match format {
            Format::Json => {
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes).map_err(Error::file(path))?;
                let digest = hex::encode(Sha256::digest(&bytes));
                let not_records = |e: serde_json::Error| {
                    bad(format!(
                        "not a JSON file of records ({{\"records\":[…]}} or an array of records): {e}"
                    ))
                };
                let array = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
                let records = if array {
                    serde_json::from_slice::<Vec<Box<RawValue>>>(&bytes).map_err(not_records)?
                } else {
                    serde_json::from_slice::<Envelope>(&bytes).map_err(not_records)?.records
                };
                (digest, records.len(), Source::Json { records: records.into_iter(), n: 0 })
            }
            Format::Ndjson => {
                // A first pass for the digest and the count, so the progress knows the total
                // without holding the file in memory.
                let mut hasher = Sha256::new();
                let mut total = 0;
                let mut reader = BufReader::new(file);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    if reader.read_until(b'\n', &mut buf).map_err(Error::file(path))? == 0 {
                        break;
                    }
                    hasher.update(&buf);
                    if !buf.iter().all(u8::is_ascii_whitespace) {
                        total += 1;
                    }
                }
                let file = File::open(path).map_err(Error::file(path))?;
                (
                    hex::encode(hasher.finalize()),
                    total,
                    Source::Ndjson { reader: BufReader::new(file), line: 0 },
                )
            }
        };
        if total == 0 {
            return Err(bad("the file holds no records".into()));
        }
        Ok(Input {
            digest,
            total,
            path: path.to_owned(),
            source,
            seen: HashSet::new(),
            next_index: 0,
            pending: None,
            batch_records,
            body_budget,
            done: false,
        })
    }

    /// The idempotency key of chunk `index`: the file's digest and the chunk's position, so a
    /// rerun on the same file replays each batch instead of signing it again. A rerun with
    /// another `--batch-records` cuts other chunks under the same keys: the appliance refuses
    /// those (409 `idempotency_conflict`) rather than sign anything twice. 77–85 ASCII
    /// characters, within the API's 1–200 bytes.
    pub fn idempotency_key(&self, index: usize) -> String {
        format!("hcert-batch-{}-{index}", self.digest)
    }

    /// The next record, checked.
    fn next_entry(&mut self) -> Result<Option<Entry>> {
        if let Some(e) = self.pending.take() {
            return Ok(Some(e));
        }
        let Some(raw) = self.source.next_raw(&self.path)? else { return Ok(None) };
        Ok(Some(self.check(raw)))
    }

    fn check(&mut self, raw: Raw) -> Entry {
        let reject = |r#ref: &str, code: &str, field: &str, message: String| {
            Entry::Local(Rejection {
                r#ref: r#ref.to_owned(),
                code: code.into(),
                field: field.into(),
                message,
            })
        };
        let text = match raw.text {
            Ok(t) => t,
            Err(why) => return reject(&raw.locator, "not_json", "", why),
        };
        if let Err(e) = serde_json::from_str::<&RawValue>(&text) {
            return reject(&raw.locator, "not_json", "", format!("not JSON: {e}"));
        }
        let record: Record<'_> = match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => {
                return reject(
                    &raw.locator,
                    "malformed_record",
                    "",
                    format!("a record is {{\"ref\": …, \"dcc\": {{…}}}}: {e}"),
                );
            }
        };
        let Some(r#ref) = record.r#ref else {
            return reject(&raw.locator, "no_ref", "ref", "the record has no ref".into());
        };
        if r#ref.is_empty() || r#ref.chars().count() > MAX_REF_LEN || r#ref.chars().any(char::is_control) {
            // The ref itself cannot name the row: it may hold what a spreadsheet mangles.
            return reject(
                &raw.locator,
                "bad_ref",
                "ref",
                format!("ref must be 1–{MAX_REF_LEN} characters without control characters"),
            );
        }
        let Some(dcc) = record.dcc else {
            return reject(&r#ref, "no_dcc", "dcc", "the record has no dcc".into());
        };
        let digest: [u8; 32] = Sha256::digest(r#ref.as_bytes()).into();
        let mut short = [0u8; 16];
        short.copy_from_slice(&digest[..16]);
        if !self.seen.insert(short) {
            return reject(
                &r#ref,
                "duplicate_ref",
                "ref",
                format!("an earlier record of the file has this ref ({})", raw.locator),
            );
        }
        let json = format!(
            "{{\"ref\":{},\"dcc\":{}}}",
            serde_json::to_string(&r#ref).unwrap_or_default(),
            dcc.get()
        );
        if json.len() > self.body_budget {
            return reject(&r#ref, "dcc_too_large", "dcc", format!("{} bytes of JSON", dcc.get().len()));
        }
        Entry::Send { r#ref, json }
    }

    /// The next chunk: at most `batch_records` records sent and a body within the budget.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        if self.done {
            return Ok(None);
        }
        let mut entries = Vec::new();
        let (mut records, mut bytes) = (0, 200);
        while let Some(entry) = self.next_entry()? {
            if let Entry::Send { json, .. } = &entry {
                if records == self.batch_records || bytes + json.len() + 1 > self.body_budget {
                    self.pending = Some(entry);
                    break;
                }
                records += 1;
                bytes += json.len() + 1;
            }
            entries.push(entry);
        }
        if entries.is_empty() {
            self.done = true;
            return Ok(None);
        }
        let index = self.next_index;
        if records > 0 {
            self.next_index += 1;
        }
        Ok(Some(Chunk { index, entries }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    fn all(input: &mut Input) -> Vec<Chunk> {
        std::iter::from_fn(|| input.next_chunk().unwrap()).collect()
    }

    #[test]
    fn ndjson_lines_that_are_not_records_are_rejected_with_their_line_and_the_rest_goes_on() {
        let text = "{\"ref\":\"a\",\"dcc\":{}}\nnot json\n\n{\"dcc\":{}}\n{\"ref\":\"a\",\"dcc\":{}}\n\
                    {\"ref\":\"b\",\"dcc\":{},\"x\":1}\n{\"ref\":\"c\",\"dcc\":{}}\n{\"ref\":\"e\",\"dcc\":{}}\n\
                    {\"ref\":\"d\"}\n";
        let (_d, p) = write("f.ndjson", text);
        let mut input = Input::open(&p, 2, BODY_BUDGET).unwrap();
        assert_eq!(input.total, 8);
        let chunks = all(&mut input);
        assert_eq!(chunks.len(), 2, "a and c make the first chunk, e the second");
        let local: Vec<(String, String)> = chunks
            .iter()
            .flat_map(|c| &c.entries)
            .filter_map(|e| match e {
                Entry::Local(r) => Some((r.r#ref.clone(), r.code.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            local,
            [
                ("line 2".into(), "not_json".into()),
                ("line 4".into(), "no_ref".into()),
                ("a".into(), "duplicate_ref".into()),
                ("line 6".into(), "malformed_record".into()),
                ("d".into(), "no_dcc".into()),
            ]
        );
        assert_eq!((chunks[0].records(), chunks[1].records()), (2, 1));
        assert_eq!((chunks[0].index, chunks[1].index), (0, 1));
        assert_eq!(chunks[0].entries.len(), 6, "local rejections keep their place");
    }

    #[test]
    fn chunks_hold_at_most_the_record_limit_and_the_body_budget_and_keys_follow_the_file() {
        let recs: Vec<String> = (0..7)
            .map(|i| format!("{{\"ref\":\"r{i}\",\"dcc\":{{\"x\":\"{}\"}}}}", "y".repeat(50)))
            .collect();
        let (_d, p) = write("f.json", &format!("{{\"records\":[{}]}}", recs.join(",")));
        let mut input = Input::open(&p, 3, BODY_BUDGET).unwrap();
        let sizes: Vec<usize> = all(&mut input).iter().map(Chunk::records).collect();
        assert_eq!(sizes, [3, 3, 1]);
        let mut small = Input::open(&p, 10, 200 + 2 * 80).unwrap();
        let chunks = all(&mut small);
        assert!(chunks.iter().all(|c| c.records() <= 2) && chunks.len() >= 4, "{:?}", chunks.len());
        let body: serde_json::Value =
            serde_json::from_slice(&chunks[1].body(&small.idempotency_key(1))).unwrap();
        assert_eq!(body["records"].as_array().unwrap().len(), chunks[1].records());
        let key = body["idempotency_key"].as_str().unwrap();
        assert!(key.len() <= 200 && key.ends_with("-1") && key.contains(&small.digest));
        let (_d2, other) = write("g.json", &format!("[{}]", recs[..6].join(",")));
        assert_ne!(Input::open(&other, 3, BODY_BUDGET).unwrap().digest, small.digest);
    }

    #[test]
    fn a_file_that_is_not_a_file_of_records_is_a_configuration_error() {
        for (name, text, why) in [
            ("f.json", "{\"records\":", "not a JSON file of records"),
            ("f.json", "[]", "no records"),
            ("f.ndjson", "\n\n", "no records"),
            ("f.csv", "ref,dcc", ".ndjson"),
        ] {
            let (_d, p) = write(name, text);
            let e = Input::open(&p, 10, BODY_BUDGET).err().expect(name);
            assert!(matches!(e, Error::Config(_)) && e.to_string().contains(why), "{name}: {e}");
        }
    }
}
