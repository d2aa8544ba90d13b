//! Versioned schema migrations, applied at start: each `migrations/NNNN_name.sql` file is
//! embedded in the binary, applied once in order, and recorded with its SHA-256 in
//! `hcert_schema`, all in one transaction under an advisory lock so that nodes starting
//! together migrate exactly once. A database the binary does not fully recognise (newer, or an
//! applied migration that differs from the shipped one, or a hole) is refused untouched.

use postgres::Client;
use sha2::{Digest, Sha256};

use super::{PgError, PgPool};

/// One migration shipped with the binary.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its version: 1, 2, … without holes, in the order of [`MIGRATIONS`].
    pub version: i32,
    /// Its name (the file name without the number and `.sql`).
    pub name: &'static str,
    /// Its SQL, run as one batch inside the migration transaction.
    pub sql: &'static str,
}

impl Migration {
    /// SHA-256 of the SQL text, recorded when applied and compared at every later start.
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(self.sql.as_bytes()).into()
    }
}

/// The migrations this binary knows, oldest first. A new one is a new file and a new line
/// here with the next version; an applied one is never edited (its hash is checked).
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "meta", sql: include_str!("migrations/0001_meta.sql") },
    Migration { version: 2, name: "store", sql: include_str!("migrations/0002_store.sql") },
];

/// The advisory lock key every node takes for migrating ("hcertsch" as a big-endian i64), held
/// to the end of the transaction.
const LOCK_KEY: i64 = i64::from_be_bytes(*b"hcertsch");

/// A migration as recorded in `hcert_schema`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Its version.
    pub version: i32,
    /// Its name when applied.
    pub name: String,
    /// SHA-256 of its SQL when applied.
    pub sha256: Vec<u8>,
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The versions this call applied (empty when the schema was current, e.g. another node
    /// migrated first).
    pub applied: Vec<i32>,
    /// The schema version now.
    pub version: i32,
}

/// Brings the database's schema up to [`MIGRATIONS`]: everything in one transaction under
/// `pg_advisory_xact_lock`, so a crash leaves no half-applied version and a second node
/// waits, then finds nothing to do.
pub fn migrate(pool: &PgPool) -> Result<Migrated, PgError> {
    migrate_with(pool, MIGRATIONS)
}

/// [`migrate`] with a given list (tests).
pub(crate) fn migrate_with(pool: &PgPool, known: &[Migration]) -> Result<Migrated, PgError> {
    let mut conn = pool.get()?;
    let result = apply(&mut conn, known);
    match result {
        Ok(m) => Ok(m),
        Err(Step::Client(e)) => Err(conn.fail(&e)),
        Err(Step::Schema(why)) => Err(PgError::Schema(why)),
    }
}

/// Checks, changing nothing, that the database's schema is exactly this binary's, and returns
/// its version: for a handle that must not migrate (`audit verify`, a `store copy` source).
pub fn verify(pool: &PgPool) -> Result<i32, PgError> {
    pool.run(|c| read_applied(c, true)).and_then(|applied| {
        let done = plan(&applied, MIGRATIONS).map_err(PgError::Schema)?;
        if done < MIGRATIONS.len() {
            return Err(PgError::Schema(format!(
                "the database is at version {done}, this binary needs {}: start a node (it migrates at start)",
                MIGRATIONS.len()
            )));
        }
        Ok(i32::try_from(done).unwrap_or(i32::MAX))
    })
}

enum Step {
    Client(postgres::Error),
    Schema(String),
}

impl From<postgres::Error> for Step {
    fn from(e: postgres::Error) -> Step {
        Step::Client(e)
    }
}

fn apply(client: &mut Client, known: &[Migration]) -> Result<Migrated, Step> {
    let mut tx = client.transaction()?;
    // No statement timeout here: a node waits for another's migration however long it runs,
    // and a migration of a large table may take minutes.
    tx.batch_execute("SET LOCAL statement_timeout = 0")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])?;
    // Under the lock: two nodes creating the table at once would collide in the catalog.
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS hcert_schema (
             version integer PRIMARY KEY,
             name text NOT NULL,
             sha256 bytea NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )?;
    let applied = read_applied(&mut tx, false)?;
    // Dropping the transaction on an error rolls it back: a refused database is left as it was.
    let done = plan(&applied, known).map_err(Step::Schema)?;
    let mut versions = Vec::new();
    for m in &known[done..] {
        tx.batch_execute(m.sql)?;
        tx.execute(
            "INSERT INTO hcert_schema (version, name, sha256) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &m.sha256().as_slice()],
        )?;
        versions.push(m.version);
    }
    tx.commit()?;
    for v in &versions {
        log::info!("store: PostgreSQL schema migrated to version {v}");
    }
    Ok(Migrated { applied: versions, version: known.len().try_into().unwrap_or(i32::MAX) })
}

/// The recorded migrations, by version. `missing_ok`: a database without `hcert_schema` reads
/// as empty instead of failing.
fn read_applied(
    client: &mut impl postgres::GenericClient,
    missing_ok: bool,
) -> Result<Vec<Applied>, postgres::Error> {
    if missing_ok {
        let exists: bool = client.query_one("SELECT to_regclass('hcert_schema') IS NOT NULL", &[])?.get(0);
        if !exists {
            return Ok(Vec::new());
        }
    }
    let rows = client.query("SELECT version, name, sha256 FROM hcert_schema ORDER BY version", &[])?;
    Ok(rows.iter().map(|r| Applied { version: r.get(0), name: r.get(1), sha256: r.get(2) }).collect())
}

/// How many of `known` the database already has, after checking that what it has is exactly
/// a prefix of `known`: not newer, no holes, nothing changed. The messages say what to do.
pub(crate) fn plan(applied: &[Applied], known: &[Migration]) -> Result<usize, String> {
    if let Some(newest) = applied.last()
        && usize::try_from(newest.version).map_or(true, |v| v > known.len())
    {
        return Err(format!(
            "the database has schema version {} but this binary knows versions up to {}: a newer \
             hcert-signer migrated it; run that version (the database was not changed)",
            newest.version,
            known.len()
        ));
    }
    for (i, a) in applied.iter().enumerate() {
        let expected = &known[i];
        if a.version != expected.version {
            return Err(format!(
                "the database records schema versions {} with version {} missing: it was edited by \
                 hand or by another program; restore it from a backup (the database was not changed)",
                applied.iter().map(|a| a.version.to_string()).collect::<Vec<_>>().join(", "),
                expected.version
            ));
        }
        if a.name != expected.name || a.sha256 != expected.sha256() {
            return Err(format!(
                "migration {:04} was applied as {:?} with SHA-256 {}, but this binary ships {:?} with \
                 SHA-256 {}: a migration was changed after it was applied; run the binary that applied \
                 it (the database was not changed)",
                a.version,
                a.name,
                hex::encode(&a.sha256),
                expected.name,
                hex::encode(expected.sha256())
            ));
        }
    }
    Ok(applied.len())
}
