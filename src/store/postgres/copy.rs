//! Moving a PostgreSQL store ([`crate::store::copy`]): its tables read out as items a page at a
//! time inside one read-only snapshot, and items written into an empty database in one
//! transaction, batches keeping their numbers (the identity continues after the largest).

use std::collections::{HashMap, VecDeque};

use super::PooledClient;
use super::store::{PgStore, count, store_error};
use crate::store::StoreError;
use crate::store::block::BLOCK;
use crate::store::copy::{BatchItem, Checker, Item, Items, Tally};
use crate::store::idempotency::Entry;
use crate::store::seal::Purpose;

/// Rows read, or written, per statement (the unit tests use a few, to cross page ends).
const PAGE: i64 = if cfg!(test) { 7 } else { 500 };

/// What the export reads next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Meta,
    Batches,
    Pending,
    Results,
    Idempotency,
    Audit,
    Done,
}

/// The export's cursor: a connection holding one snapshot, the phase and where it stands.
struct Export {
    client: Option<PooledClient>,
    phase: Phase,
    /// The last key read in this phase (seq, block; or a key hash); -1 before the first (sled
    /// numbers batches from 0).
    after: (i64, i32),
    after_key: Vec<u8>,
    page: VecDeque<Item>,
}

impl Export {
    /// Reads the next page of the current phase into `page`, moving on through phases.
    fn fill(&mut self) -> Result<(), postgres::Error> {
        let Some(c) = self.client.as_mut() else { return Ok(()) };
        while self.page.is_empty() && self.phase != Phase::Done {
            let (next, rows) = match self.phase {
                Phase::Meta => {
                    for r in c.query("SELECT value FROM hcert_meta WHERE key = 'kek_label'", &[])? {
                        let v: Vec<u8> = r.get(0);
                        self.page.push_back(Item::Kek(String::from_utf8_lossy(&v).into_owned()));
                    }
                    for r in c.query("SELECT label, record FROM keys ORDER BY label", &[])? {
                        self.page.push_back(Item::Key { label: r.get(0), record: r.get(1) });
                    }
                    for r in c.query("SELECT fingerprint, der FROM cscas ORDER BY fingerprint", &[])? {
                        self.page.push_back(Item::Csca { fingerprint: r.get(0), der: r.get(1) });
                    }
                    for r in
                        c.query("SELECT fingerprint, record FROM csca_pending ORDER BY fingerprint", &[])?
                    {
                        self.page.push_back(Item::CscaPending { fingerprint: r.get(0), record: r.get(1) });
                    }
                    (Phase::Batches, 0)
                }
                Phase::Batches => {
                    let rows = c.query(
                        "SELECT seq, id, issuer, idempotency, created_at, total, signed, rejected, data_key
                         FROM batches WHERE seq > $1 ORDER BY seq LIMIT $2",
                        &[&self.after.0, &PAGE],
                    )?;
                    for r in &rows {
                        self.after.0 = r.get(0);
                        let id: Vec<u8> = r.get(1);
                        let idempotency: Option<Vec<u8>> = r.get(3);
                        self.page.push_back(Item::Batch(BatchItem {
                            seq: count(r.get(0)),
                            id: id.try_into().unwrap_or_default(),
                            issuer: r.get(2),
                            idempotency: idempotency.and_then(|k| k.try_into().ok()),
                            created_at: r.get(4),
                            total: unsigned(r.get(5)),
                            signed: unsigned(r.get(6)),
                            rejected: unsigned(r.get(7)),
                            data_key: r.get(8),
                        }));
                    }
                    (Phase::Pending, rows.len())
                }
                Phase::Pending | Phase::Results => {
                    let (sql, purpose, next) = if self.phase == Phase::Pending {
                        (
                            "SELECT batch_seq, block, sealed FROM pending WHERE (batch_seq, block) > ($1, $2)
                             ORDER BY batch_seq, block LIMIT $3",
                            Purpose::Pending,
                            Phase::Results,
                        )
                    } else {
                        (
                            "SELECT batch_seq, block, sealed FROM results WHERE (batch_seq, block) > ($1, $2)
                             ORDER BY batch_seq, block LIMIT $3",
                            Purpose::Results,
                            Phase::Idempotency,
                        )
                    };
                    let rows = c.query(sql, &[&self.after.0, &self.after.1, &PAGE])?;
                    for r in &rows {
                        self.after = (r.get(0), r.get(1));
                        self.page.push_back(Item::Block {
                            seq: count(self.after.0),
                            first: u32::try_from(self.after.1).unwrap_or(0),
                            purpose,
                            sealed: r.get(2),
                        });
                    }
                    (next, rows.len())
                }
                Phase::Idempotency => {
                    let rows = c.query(
                        "SELECT key_hash, request_hash, batch_seq, deleted_id, deleted_at FROM idempotency
                         WHERE key_hash > $1 ORDER BY key_hash LIMIT $2",
                        &[&self.after_key, &PAGE],
                    )?;
                    for r in &rows {
                        self.after_key = r.get(0);
                        let entry = match (r.get::<_, Option<i64>>(2), r.get::<_, Option<Vec<u8>>>(3)) {
                            (Some(seq), _) => Entry::Live {
                                seq: count(seq),
                                request: r.get::<_, Vec<u8>>(1).try_into().unwrap_or_default(),
                            },
                            (None, id) => Entry::Tombstone {
                                batch_id: id.and_then(|id| id.try_into().ok()).unwrap_or_default(),
                                deleted_at: r.get::<_, Option<i64>>(4).unwrap_or(0),
                            },
                        };
                        let key = self.after_key.clone().try_into().unwrap_or_default();
                        self.page.push_back(Item::Idempotency { key, entry });
                    }
                    (Phase::Audit, rows.len())
                }
                Phase::Audit => {
                    let rows = c.query(
                        "SELECT seq, stored, checkpoint FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                        &[&self.after.0, &PAGE],
                    )?;
                    for r in &rows {
                        self.after.0 = r.get(0);
                        self.page.push_back(Item::Audit {
                            seq: count(r.get(0)),
                            stored: r.get(1),
                            checkpoint: r.get(2),
                        });
                    }
                    (Phase::Done, rows.len())
                }
                Phase::Done => unreachable!("the loop ends at Done"),
            };
            // A phase ends with a short page; the next one starts from the beginning.
            if self.phase == Phase::Meta || rows < PAGE as usize {
                self.phase = next;
                self.after = (-1, -1);
                self.after_key.clear();
            }
        }
        if self.phase == Phase::Done && self.page.is_empty() {
            c.batch_execute("COMMIT")?;
            self.client = None;
        }
        Ok(())
    }
}

impl Iterator for Export {
    type Item = Result<Item, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.page.is_empty()
            && let Err(e) = self.fill()
        {
            // The snapshot's transaction failed: its connection does not go back to the pool.
            let error = self.client.take().map(|mut c| {
                c.discard();
                c.fail(&e)
            });
            self.phase = Phase::Done;
            self.page.clear();
            return error.map(|e| Err(store_error(e)));
        }
        self.page.pop_front().map(Ok)
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        // Abandoned midway: the snapshot's transaction must not go back to the pool open.
        if let Some(c) = self.client.as_mut() {
            c.discard();
        }
    }
}

fn unsigned(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

impl PgStore {
    /// Every table as items, read in one repeatable-read snapshot (see
    /// [`crate::store::Backend::export`]).
    pub fn export(&self) -> Items {
        let started = self.inner.pool.get().map_err(store_error).and_then(|mut c| {
            match c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") {
                Ok(()) => Ok(c),
                Err(e) => Err(store_error(c.fail(&e))),
            }
        });
        match started {
            Ok(client) => Box::new(Export {
                client: Some(client),
                phase: Phase::Meta,
                after: (-1, -1),
                after_key: Vec::new(),
                page: VecDeque::new(),
            }),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    /// Writes `items` into this database, which must hold no store data, in one transaction
    /// (see [`crate::store::Backend::import`]); never retried (the items are read once).
    pub fn import(&self, items: Items) -> Result<Tally, StoreError> {
        let mut client = self.inner.pool.get().map_err(store_error)?;
        match import(&mut client, items) {
            Ok(tally) => {
                self.queue_changed();
                Ok(tally)
            }
            Err(Failure::Store(e)) => Err(e),
            Err(Failure::Db(e)) => Err(store_error(client.fail(&e))),
        }
    }
}

/// Why the import's transaction ended (rolled back when dropped).
enum Failure {
    Db(postgres::Error),
    Store(StoreError),
}

impl From<postgres::Error> for Failure {
    fn from(e: postgres::Error) -> Self {
        Self::Db(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// Rows of a table gathered for one multi-row INSERT.
#[derive(Default)]
struct Blocks {
    seqs: Vec<i64>,
    firsts: Vec<i32>,
    sealed: Vec<Vec<u8>>,
    records: Vec<i32>,
}

impl Blocks {
    fn len(&self) -> usize {
        self.seqs.len()
    }

    fn flush(&mut self, tx: &mut postgres::Transaction<'_>, table: &str) -> Result<(), postgres::Error> {
        if self.seqs.is_empty() {
            return Ok(());
        }
        if table == "pending" {
            tx.execute(
                "INSERT INTO pending (batch_seq, block, sealed, records)
                 SELECT * FROM unnest($1::bigint[], $2::integer[], $3::bytea[], $4::integer[])",
                &[&self.seqs, &self.firsts, &self.sealed, &self.records],
            )?;
        } else {
            tx.execute(
                "INSERT INTO results (batch_seq, block, sealed)
                 SELECT * FROM unnest($1::bigint[], $2::integer[], $3::bytea[])",
                &[&self.seqs, &self.firsts, &self.sealed],
            )?;
        }
        *self = Self::default();
        Ok(())
    }
}

/// The import's one transaction.
fn import(client: &mut PooledClient, items: Items) -> Result<Tally, Failure> {
    let mut tx = client.transaction()?;
    // Nobody else writes while we look and fill (readers may go on).
    tx.batch_execute(
        "SET LOCAL statement_timeout = 0;
         LOCK TABLE hcert_meta, batches, idempotency, pending, results, audit, audit_head, keys, cscas,
                    csca_pending IN EXCLUSIVE MODE",
    )?;
    ensure_empty(&mut tx)?;
    let mut checker = Checker::default();
    let mut totals: HashMap<u64, u32> = HashMap::new();
    let (mut pending, mut results) = (Blocks::default(), Blocks::default());
    let (mut audit_seqs, mut audit_stored, mut audit_checkpoints) = (Vec::new(), Vec::new(), Vec::new());
    let mut last_hash = None;
    let mut max_seq = 0i64;
    for item in items {
        let item = item?;
        checker.check(&item)?;
        match item {
            Item::Kek(label) => {
                tx.execute(
                    "INSERT INTO hcert_meta (key, value) VALUES ('kek_label', $1)",
                    &[&label.as_bytes()],
                )?;
            }
            Item::Key { label, record } => {
                tx.execute("INSERT INTO keys (label, record) VALUES ($1, $2)", &[&label, &record])?;
            }
            Item::Csca { fingerprint, der } => {
                tx.execute("INSERT INTO cscas (fingerprint, der) VALUES ($1, $2)", &[&fingerprint, &der])?;
            }
            Item::CscaPending { fingerprint, record } => {
                tx.execute(
                    "INSERT INTO csca_pending (fingerprint, record) VALUES ($1, $2)",
                    &[&fingerprint, &record],
                )?;
            }
            Item::Batch(b) => {
                let seq =
                    i64::try_from(b.seq).map_err(|_| StoreError::Invalid("a batch number over 2^63"))?;
                let int = |v: u32| {
                    i32::try_from(v).map_err(|_| StoreError::Invalid("too many records in one batch"))
                };
                tx.execute(
                    "INSERT INTO batches (seq, id, issuer, created_at, total, signed, rejected, data_key, idempotency)
                     OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        &seq,
                        &&b.id[..],
                        &b.issuer,
                        &b.created_at,
                        &int(b.total)?,
                        &int(b.signed)?,
                        &int(b.rejected)?,
                        &b.data_key,
                        &b.idempotency.as_ref().map(|k| &k[..]),
                    ],
                )?;
                totals.insert(b.seq, b.total);
                max_seq = max_seq.max(seq);
            }
            Item::Block { seq, first, purpose, sealed } => {
                let (rows, table) = if purpose == Purpose::Pending {
                    (&mut pending, "pending")
                } else {
                    (&mut results, "results")
                };
                rows.seqs.push(i64::try_from(seq).unwrap_or(i64::MAX));
                rows.firsts.push(i32::try_from(first).unwrap_or(i32::MAX));
                rows.sealed.push(sealed);
                // How many of the block's records are pending is inside the sealed block, which
                // a copy never opens: its span stands for it (the column is informational).
                let span = totals.get(&seq).map_or(BLOCK, |t| t.saturating_sub(first).min(BLOCK));
                rows.records.push(i32::try_from(span).unwrap_or(1).max(1));
                if rows.len() as i64 >= PAGE {
                    rows.flush(&mut tx, table)?;
                }
            }
            Item::Idempotency { key, entry } => {
                // Blocks first: an idempotency key's batch is stored by now.
                pending.flush(&mut tx, "pending")?;
                results.flush(&mut tx, "results")?;
                match entry {
                    Entry::Live { seq, request } => tx.execute(
                        "INSERT INTO idempotency (key_hash, request_hash, batch_seq) VALUES ($1, $2, $3)",
                        &[&&key[..], &&request[..], &i64::try_from(seq).unwrap_or(i64::MAX)],
                    )?,
                    // A tombstone refuses any request: its request hash is never compared.
                    Entry::Tombstone { batch_id, deleted_at } => tx.execute(
                        "INSERT INTO idempotency (key_hash, request_hash, deleted_id, deleted_at)
                         VALUES ($1, $2, $3, $4)",
                        &[&&key[..], &&[0u8; 32][..], &&batch_id[..], &deleted_at],
                    )?,
                };
            }
            Item::Audit { seq, stored, checkpoint } => {
                audit_seqs.push(i64::try_from(seq).unwrap_or(i64::MAX));
                last_hash = Some(Checker::head_hash(Some(&stored)));
                audit_stored.push(stored);
                audit_checkpoints.push(checkpoint);
                if audit_seqs.len() as i64 >= PAGE {
                    insert_audit(&mut tx, &mut audit_seqs, &mut audit_stored, &mut audit_checkpoints)?;
                }
            }
        }
    }
    pending.flush(&mut tx, "pending")?;
    results.flush(&mut tx, "results")?;
    insert_audit(&mut tx, &mut audit_seqs, &mut audit_stored, &mut audit_checkpoints)?;
    let tally = checker.tally;
    if let Some(hash) = last_hash {
        tx.execute(
            "UPDATE audit_head SET seq = $1, hash = $2",
            &[&i64::try_from(tally.head_seq).unwrap_or(i64::MAX), &&hash[..]],
        )?;
    }
    if max_seq > 0 {
        // New batches are numbered after the copied ones, so the queue's order holds.
        tx.execute("SELECT setval(pg_get_serial_sequence('batches', 'seq'), $1)", &[&max_seq])?;
    }
    tx.commit()?;
    Ok(tally)
}

fn insert_audit(
    tx: &mut postgres::Transaction<'_>,
    seqs: &mut Vec<i64>,
    stored: &mut Vec<Vec<u8>>,
    checkpoints: &mut Vec<bool>,
) -> Result<(), postgres::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO audit (seq, stored, checkpoint) SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::boolean[])",
        &[&*seqs, &*stored, &*checkpoints],
    )?;
    seqs.clear();
    stored.clear();
    checkpoints.clear();
    Ok(())
}

/// Refuses an import into a database that holds any store data, naming the first thing found.
fn ensure_empty(tx: &mut postgres::Transaction<'_>) -> Result<(), Failure> {
    let checks = [
        ("batches", "SELECT EXISTS (SELECT 1 FROM batches)"),
        ("idempotency keys", "SELECT EXISTS (SELECT 1 FROM idempotency)"),
        ("key records", "SELECT EXISTS (SELECT 1 FROM keys)"),
        ("CSCAs", "SELECT EXISTS (SELECT 1 FROM cscas) OR EXISTS (SELECT 1 FROM csca_pending)"),
        ("audit entries", "SELECT EXISTS (SELECT 1 FROM audit) OR (SELECT seq FROM audit_head) > 0"),
        ("a KEK pin", "SELECT EXISTS (SELECT 1 FROM hcert_meta WHERE key = 'kek_label')"),
    ];
    for (what, sql) in checks {
        if tx.query_one(sql, &[])?.get::<_, bool>(0) {
            return Err(StoreError::NotEmpty(what.to_owned()).into());
        }
    }
    Ok(())
}
