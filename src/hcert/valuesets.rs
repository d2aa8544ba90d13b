//! The EU DCC value sets (disease, vaccine, product, manufacturer, country, test type, result
//! and device codes): embedded at build time, extendable at run time without a rebuild.
//!
//! # Embedded sets
//!
//! The JSON files in `src/hcert/valuesets/` (copied unchanged from
//! `ehn-dcc-development/ehn-dcc-valuesets`, release 2.12.0) are compiled in with
//! [`include_str!`] and parsed once, on first use, into sorted code tables
//! ([`ValueSets::embedded`]). A lookup is a binary search over a few dozen short strings, so the
//! signing hot path never allocates or hashes for a code check.
//!
//! # Operator overrides
//!
//! Value sets change on the EU gateway (new vaccines, new rapid antigen tests; the embedded RAT
//! list `test-manf-example.json` is only an *example* of the real one). An operator can drop
//! newer copies of the same JSON files into a directory and load them with
//! [`ValueSets::with_overrides`]; the daemon passes the result to its
//! [`Policy`](crate::hcert::validate::Policy). The rules are:
//!
//! * file names are those of the embedded files (`vaccine-medicinal-product.json`, …); the RAT
//!   list may be called `test-manf.json` (its name on the gateway) or `test-manf-example.json`;
//! * a file is **merged** into the embedded set: its codes are added, and a code present in both
//!   takes the file's `active` flag and display name. Nothing is ever removed, so a partial file
//!   cannot silently drop a code; to withdraw one, list it with `"active": false`;
//! * the file's `valueSetId` must match the embedded set's, which catches a file saved under the
//!   wrong name;
//! * any other `*.json` file in the directory is an error (a typo in a file name must not go
//!   unnoticed), except `vaccine-encoding-instructions.json`, which is guidance for issuers
//!   (which product goes with which manufacturer) and not a code list of any DCC field.
//!
//! Inactive codes (`"active": false`) are still *known*: certificates issued while they were
//! active keep verifying, and re-signing them is allowed unless the policy says otherwise
//! ([`Policy::with_inactive_codes`](crate::hcert::validate::Policy::with_inactive_codes)).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// One of the EU value sets that a DCC field draws its codes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ValueSetId {
    /// `tg`: disease or agent targeted (SNOMED CT).
    DiseaseAgentTargeted,
    /// `v[].vp`: vaccine or prophylaxis type (SNOMED CT / ATC).
    VaccineProphylaxis,
    /// `v[].mp`: vaccine medicinal product (EU register numbers and others).
    VaccineMedicinalProduct,
    /// `v[].ma`: marketing authorisation holder or manufacturer (EMA SPOR organisation ids).
    VaccineMahManf,
    /// `co`: country of vaccination or test (ISO 3166-1 alpha-2).
    CountryCodes,
    /// `t[].tt`: type of test (LOINC).
    TestType,
    /// `t[].tr`: test result (SNOMED CT).
    TestResult,
    /// `t[].ma`: rapid antigen test device (JRC database ids).
    TestManf,
}

impl ValueSetId {
    /// Every value set, in a fixed order.
    pub const ALL: [ValueSetId; 8] = [
        ValueSetId::DiseaseAgentTargeted,
        ValueSetId::VaccineProphylaxis,
        ValueSetId::VaccineMedicinalProduct,
        ValueSetId::VaccineMahManf,
        ValueSetId::CountryCodes,
        ValueSetId::TestType,
        ValueSetId::TestResult,
        ValueSetId::TestManf,
    ];

    /// The file name of the set (as in the embedded copy and in an override directory).
    pub fn file_name(self) -> &'static str {
        match self {
            ValueSetId::DiseaseAgentTargeted => "disease-agent-targeted.json",
            ValueSetId::VaccineProphylaxis => "vaccine-prophylaxis.json",
            ValueSetId::VaccineMedicinalProduct => "vaccine-medicinal-product.json",
            ValueSetId::VaccineMahManf => "vaccine-mah-manf.json",
            ValueSetId::CountryCodes => "country-2-codes.json",
            ValueSetId::TestType => "test-type.json",
            ValueSetId::TestResult => "test-result.json",
            ValueSetId::TestManf => "test-manf.json",
        }
    }

    /// The `valueSetId` the JSON file carries.
    pub fn value_set_id(self) -> &'static str {
        match self {
            ValueSetId::DiseaseAgentTargeted => "disease-agent-targeted",
            ValueSetId::VaccineProphylaxis => "sct-vaccines-covid-19",
            ValueSetId::VaccineMedicinalProduct => "vaccines-covid-19-names",
            ValueSetId::VaccineMahManf => "vaccines-covid-19-auth-holders",
            ValueSetId::CountryCodes => "country-2-codes",
            ValueSetId::TestType => "covid-19-lab-test-type",
            ValueSetId::TestResult => "covid-19-lab-result",
            ValueSetId::TestManf => "covid-19-lab-test-manufacturer-and-name",
        }
    }

    /// What a code of this set names, for error messages ("unknown medicinal product …").
    pub fn describe(self) -> &'static str {
        match self {
            ValueSetId::DiseaseAgentTargeted => "disease or agent",
            ValueSetId::VaccineProphylaxis => "vaccine or prophylaxis",
            ValueSetId::VaccineMedicinalProduct => "medicinal product",
            ValueSetId::VaccineMahManf => "marketing authorisation holder",
            ValueSetId::CountryCodes => "country",
            ValueSetId::TestType => "test type",
            ValueSetId::TestResult => "test result",
            ValueSetId::TestManf => "rapid antigen test device",
        }
    }

    /// File names accepted for this set in an override directory.
    fn override_names(self) -> &'static [&'static str] {
        match self {
            ValueSetId::DiseaseAgentTargeted => &["disease-agent-targeted.json"],
            ValueSetId::VaccineProphylaxis => &["vaccine-prophylaxis.json"],
            ValueSetId::VaccineMedicinalProduct => &["vaccine-medicinal-product.json"],
            ValueSetId::VaccineMahManf => &["vaccine-mah-manf.json"],
            ValueSetId::CountryCodes => &["country-2-codes.json"],
            ValueSetId::TestType => &["test-type.json"],
            ValueSetId::TestResult => &["test-result.json"],
            ValueSetId::TestManf => &["test-manf-example.json", "test-manf.json"],
        }
    }

    /// The embedded JSON text.
    fn embedded_json(self) -> &'static str {
        match self {
            ValueSetId::DiseaseAgentTargeted => {
                include_str!("valuesets/disease-agent-targeted.json")
            }
            ValueSetId::VaccineProphylaxis => include_str!("valuesets/vaccine-prophylaxis.json"),
            ValueSetId::VaccineMedicinalProduct => {
                include_str!("valuesets/vaccine-medicinal-product.json")
            }
            ValueSetId::VaccineMahManf => include_str!("valuesets/vaccine-mah-manf.json"),
            ValueSetId::CountryCodes => include_str!("valuesets/country-2-codes.json"),
            ValueSetId::TestType => include_str!("valuesets/test-type.json"),
            ValueSetId::TestResult => include_str!("valuesets/test-result.json"),
            ValueSetId::TestManf => include_str!("valuesets/test-manf-example.json"),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A file name in an override directory that is known but deliberately not loaded.
const IGNORED_FILES: &[&str] = &["vaccine-encoding-instructions.json"];

/// Why a value-set file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ValueSetError {
    /// The directory or a file in it could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not a value-set JSON document.
    #[error("{}: not a value-set file: {source}", path.display())]
    Json {
        /// The file concerned.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The file's `valueSetId` is not the one its name promises.
    #[error("{}: valueSetId is {found:?}, expected {expected:?}", path.display())]
    WrongId {
        /// The file concerned.
        path: PathBuf,
        /// The id the file name calls for.
        expected: &'static str,
        /// The id the file carries.
        found: String,
    },
    /// A `*.json` file whose name is not a value set this appliance uses.
    #[error("{}: not a known value-set file name", path.display())]
    UnknownFile {
        /// The file concerned.
        path: PathBuf,
    },
    /// A code is empty or longer than any DCC field allows.
    #[error("{}: invalid code {code:?}", path.display())]
    BadCode {
        /// The file concerned.
        path: PathBuf,
        /// The code (a public identifier, never personal data).
        code: String,
    },
}

/// The on-disk shape of a value-set file.
#[derive(serde::Deserialize)]
struct ValueSetFile {
    #[serde(rename = "valueSetId")]
    id: String,
    #[serde(rename = "valueSetDate", default)]
    date: String,
    #[serde(rename = "valueSetValues")]
    values: BTreeMap<String, ValueSetEntry>,
}

#[derive(serde::Deserialize)]
struct ValueSetEntry {
    #[serde(default)]
    display: String,
    // A code without the flag is taken as active, as the EU files always set it.
    #[serde(default = "default_active")]
    active: bool,
}

fn default_active() -> bool {
    true
}

/// One code of a value set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Code {
    code: Box<str>,
    display: Box<str>,
    active: bool,
}

/// A code found in a value set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeInfo<'a> {
    /// The code itself.
    pub code: &'a str,
    /// Its English display name.
    pub display: &'a str,
    /// Whether the EU still lists it as active (inactive codes stay valid in old certificates).
    pub active: bool,
}

/// One value set: its codes, sorted for binary search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueSet {
    id: ValueSetId,
    date: String,
    codes: Vec<Code>,
}

impl ValueSet {
    /// Which set this is.
    pub fn id(&self) -> ValueSetId {
        self.id
    }

    /// The `valueSetDate` of the newest file merged into this set.
    pub fn date(&self) -> &str {
        &self.date
    }

    /// The number of codes (active or not).
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// Whether the set has no codes.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// Looks up a code.
    pub fn get(&self, code: &str) -> Option<CodeInfo<'_>> {
        self.codes.binary_search_by(|c| (*c.code).cmp(code)).ok().map(|i| self.codes[i].info())
    }

    /// Every code, in code order.
    pub fn iter(&self) -> impl Iterator<Item = CodeInfo<'_>> {
        self.codes.iter().map(Code::info)
    }

    /// Merges a parsed file into the set (codes added or updated, never removed).
    fn merge(&mut self, file: ValueSetFile, path: &Path) -> Result<usize, ValueSetError> {
        if file.id != self.id.value_set_id() {
            return Err(ValueSetError::WrongId {
                path: path.to_path_buf(),
                expected: self.id.value_set_id(),
                found: file.id,
            });
        }
        let mut added = 0;
        for (code, entry) in file.values {
            // No DCC field is longer than 80 characters, so a longer "code" is a broken file.
            if code.is_empty() || code.chars().count() > 80 {
                return Err(ValueSetError::BadCode { path: path.to_path_buf(), code });
            }
            let new = Code {
                code: code.into_boxed_str(),
                display: entry.display.into_boxed_str(),
                active: entry.active,
            };
            match self.codes.binary_search_by(|c| c.code.cmp(&new.code)) {
                Ok(i) => self.codes[i] = new,
                Err(i) => {
                    self.codes.insert(i, new);
                    added += 1;
                }
            }
        }
        if file.date > self.date {
            self.date = file.date;
        }
        Ok(added)
    }
}

impl Code {
    fn info(&self) -> CodeInfo<'_> {
        CodeInfo { code: &self.code, display: &self.display, active: self.active }
    }
}

/// All the value sets a DCC is checked against.
#[derive(Clone, PartialEq, Eq)]
pub struct ValueSets {
    sets: [ValueSet; 8],
}

impl fmt::Debug for ValueSets {
    // A summary: the full tables would drown any log or assertion message they end up in.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for set in &self.sets {
            m.entry(&set.id, &format_args!("{} codes, {}", set.codes.len(), set.date));
        }
        m.finish()
    }
}

impl ValueSets {
    /// The value sets compiled into the binary, parsed once per process.
    pub fn embedded() -> &'static ValueSets {
        Self::embedded_shared_ref()
    }

    /// The embedded value sets as a shared handle (what a
    /// [`Policy`](crate::hcert::validate::Policy) holds); the same allocation every time.
    pub fn embedded_shared() -> Arc<ValueSets> {
        Arc::clone(Self::embedded_shared_ref())
    }

    fn embedded_shared_ref() -> &'static Arc<ValueSets> {
        static EMBEDDED: OnceLock<Arc<ValueSets>> = OnceLock::new();
        EMBEDDED.get_or_init(|| Arc::new(ValueSets::parse_embedded()))
    }

    fn parse_embedded() -> ValueSets {
        let sets = ValueSetId::ALL.map(|id| {
            let mut set = ValueSet { id, date: String::new(), codes: Vec::new() };
            // The embedded files are part of the source tree and checked by the unit tests, so
            // a failure here is a build defect, not bad input.
            let file: ValueSetFile = serde_json::from_str(id.embedded_json())
                .unwrap_or_else(|e| panic!("embedded value set {}: {e}", id.file_name()));
            set.merge(file, Path::new(id.file_name()))
                .unwrap_or_else(|e| panic!("embedded value set {}: {e}", id.file_name()));
            set
        });
        ValueSets { sets }
    }

    /// The embedded value sets extended with the files found in `dir` (see the module
    /// documentation for the merge rules). A missing directory is an error: an operator who
    /// configured one expects it to be used.
    pub fn with_overrides(dir: &Path) -> Result<ValueSets, ValueSetError> {
        let mut sets = ValueSets::embedded().clone();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ValueSetError::Io { path, source }
        };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".json") {
                names.push(name.to_owned());
            }
        }
        // Sorted so that, for the RAT list, `test-manf-example.json` is merged before
        // `test-manf.json` and the gateway's copy wins.
        names.sort();
        for name in names {
            let path = dir.join(&name);
            if IGNORED_FILES.contains(&name.as_str()) {
                continue;
            }
            let Some(id) =
                ValueSetId::ALL.into_iter().find(|id| id.override_names().contains(&name.as_str()))
            else {
                return Err(ValueSetError::UnknownFile { path });
            };
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            sets.merge_json(id, &text, &path)?;
        }
        Ok(sets)
    }

    /// Merges one value-set JSON document into the set `id` (codes added or updated, never
    /// removed) and returns how many codes were new. `origin` names the source in errors.
    pub fn merge_json(&mut self, id: ValueSetId, json: &str, origin: &Path) -> Result<usize, ValueSetError> {
        let file: ValueSetFile = serde_json::from_str(json)
            .map_err(|source| ValueSetError::Json { path: origin.to_path_buf(), source })?;
        self.sets[id.index()].merge(file, origin)
    }

    /// The set `id`.
    pub fn get(&self, id: ValueSetId) -> &ValueSet {
        &self.sets[id.index()]
    }

    /// Looks up `code` in the set `id`.
    pub fn lookup(&self, id: ValueSetId, code: &str) -> Option<CodeInfo<'_>> {
        self.sets[id.index()].get(code)
    }

    /// Whether `code` is in the set `id` (active or not).
    pub fn contains(&self, id: ValueSetId, code: &str) -> bool {
        self.lookup(id, code).is_some()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The embedded sets plus the RAT device "532" that the upstream DCC schema examples use:
    /// it is not in the embedded *example* RAT list, so a deployment takes it from the gateway's
    /// list through an override, as this does.
    pub(crate) fn with_example_rat() -> Arc<ValueSets> {
        static SETS: OnceLock<Arc<ValueSets>> = OnceLock::new();
        SETS.get_or_init(|| {
            let mut vs = ValueSets::embedded().clone();
            let file = r#"{"valueSetId":"covid-19-lab-test-manufacturer-and-name","valueSetDate":"2021-07-01",
                "valueSetValues":{"532":{"display":"schema example device","lang":"en","active":true}}}"#;
            vs.merge_json(ValueSetId::TestManf, file, Path::new("test-manf.json")).expect("merge");
            Arc::new(vs)
        })
        .clone()
    }

    #[test]
    fn embedded_sets_parse_and_hold_the_expected_codes() {
        let vs = ValueSets::embedded();
        for id in ValueSetId::ALL {
            assert!(!vs.get(id).is_empty(), "{id:?} is empty");
            assert_eq!(vs.get(id).id(), id);
        }
        assert!(vs.contains(ValueSetId::DiseaseAgentTargeted, "840539006"));
        assert!(vs.contains(ValueSetId::VaccineMedicinalProduct, "EU/1/20/1528"));
        assert!(vs.contains(ValueSetId::VaccineMahManf, "ORG-100030215"));
        assert!(vs.contains(ValueSetId::CountryCodes, "VN"));
        assert!(vs.contains(ValueSetId::TestType, "LP217198-3"));
        assert!(vs.contains(ValueSetId::TestResult, "260373001"));
        assert!(vs.contains(ValueSetId::TestManf, "1232"));
        assert!(!vs.contains(ValueSetId::CountryCodes, "XY"));
        assert!(!vs.contains(ValueSetId::CountryCodes, "vn"));
        assert!(!vs.contains(ValueSetId::VaccineMahManf, "ORG-99999999"));
        assert_eq!(vs.get(ValueSetId::CountryCodes).len(), 250);
        // Same allocation every time: parsed once.
        assert!(std::ptr::eq(vs, ValueSets::embedded()));
        assert!(Arc::ptr_eq(&ValueSets::embedded_shared(), &ValueSets::embedded_shared()));
    }

    #[test]
    fn inactive_codes_are_known_but_flagged() {
        let vs = ValueSets::embedded();
        let j07 = vs.lookup(ValueSetId::VaccineProphylaxis, "J07BX03").expect("J07BX03 listed");
        assert!(!j07.active);
        let mrna = vs.lookup(ValueSetId::VaccineProphylaxis, "1119349007").expect("mRNA listed");
        assert!(mrna.active);
        assert_eq!(mrna.display, "SARS-CoV-2 mRNA vaccine");
    }

    #[test]
    fn codes_are_sorted_and_unique() {
        let vs = ValueSets::embedded();
        for id in ValueSetId::ALL {
            let codes: Vec<&str> = vs.get(id).iter().map(|c| c.code).collect();
            assert!(codes.windows(2).all(|w| w[0] < w[1]), "{id:?} not strictly sorted");
        }
    }

    fn write(dir: &Path, name: &str, body: &str) {
        std::fs::write(dir.join(name), body).expect("write test file");
    }

    #[test]
    fn override_directory_adds_and_updates_codes() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "test-manf.json",
            r#"{"valueSetId":"covid-19-lab-test-manufacturer-and-name","valueSetDate":"2023-06-01",
                "valueSetValues":{
                  "9999":{"display":"New RAT","lang":"en","active":true,"system":"x","version":"1"},
                  "1232":{"display":"Abbott (withdrawn)","lang":"en","active":false,"system":"x","version":"1"}}}"#,
        );
        write(dir.path(), "vaccine-encoding-instructions.json", "{}");
        write(dir.path(), "README.md", "ignored, not JSON");
        let vs = ValueSets::with_overrides(dir.path()).expect("overrides load");
        let new = vs.lookup(ValueSetId::TestManf, "9999").expect("added");
        assert!(new.active);
        let old = vs.lookup(ValueSetId::TestManf, "1232").expect("kept");
        assert!(!old.active, "override's active flag wins");
        assert_eq!(vs.get(ValueSetId::TestManf).date(), "2023-06-01");
        // Codes only in the embedded file stay.
        assert!(vs.contains(ValueSetId::TestManf, "1833"));
        // The embedded copy is untouched.
        assert!(!ValueSets::embedded().contains(ValueSetId::TestManf, "9999"));
        // Other sets are untouched.
        assert_eq!(vs.get(ValueSetId::CountryCodes), ValueSets::embedded().get(ValueSetId::CountryCodes));
    }

    #[test]
    fn override_directory_rejects_mistakes() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "country-2-codes.json",
            r#"{"valueSetId":"covid-19-lab-result","valueSetValues":{}}"#,
        );
        let err = ValueSets::with_overrides(dir.path()).expect_err("wrong id");
        assert!(matches!(err, ValueSetError::WrongId { .. }), "{err}");

        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "vaccine-medicinal-products.json", "{}");
        let err = ValueSets::with_overrides(dir.path()).expect_err("typo in name");
        assert!(matches!(err, ValueSetError::UnknownFile { .. }), "{err}");

        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "test-type.json", "not json");
        let err = ValueSets::with_overrides(dir.path()).expect_err("bad json");
        assert!(matches!(err, ValueSetError::Json { .. }), "{err}");

        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "test-type.json",
            r#"{"valueSetId":"covid-19-lab-test-type","valueSetValues":{"":{"active":true}}}"#,
        );
        let err = ValueSets::with_overrides(dir.path()).expect_err("empty code");
        assert!(matches!(err, ValueSetError::BadCode { .. }), "{err}");

        let missing = dir.path().join("nope");
        let err = ValueSets::with_overrides(&missing).expect_err("missing dir");
        assert!(matches!(err, ValueSetError::Io { .. }), "{err}");
    }
}
