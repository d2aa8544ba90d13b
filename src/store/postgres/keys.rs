//! Key lifecycle records and the country's CSCAs in PostgreSQL, each change in one transaction
//! with its audit entries, and announced to the other nodes (`NOTIFY hcert_keys`) so a rotation
//! through any node takes effect on all of them.

use super::store::{PgStore, TxError};
use crate::audit::Event;
use crate::store::StoreError;

impl PgStore {
    /// Every key record by label.
    pub fn key_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows = self.read(|c| c.query("SELECT label, record FROM keys ORDER BY label", &[]))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// One key record.
    pub fn key_record(&self, label: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self.read(|c| c.query_opt("SELECT record FROM keys WHERE label = $1", &[&label]))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Writes a key record with its audit events; with `expect`, only over that record.
    pub fn put_key_record(
        &self,
        label: &str,
        record: &[u8],
        expect: Option<Option<&[u8]>>,
        events: Vec<Event>,
    ) -> Result<(), StoreError> {
        let now = super::store::unix_now();
        let n = events.len() as u64;
        self.tx(|tx| {
            if let Some(expect) = expect {
                // The row lock makes two officers' writes one after the other; a key nobody
                // stored yet is guarded by the primary key (the second insert fails below).
                let current = tx
                    .query_opt("SELECT record FROM keys WHERE label = $1 FOR UPDATE", &[&label])?
                    .map(|r| r.get::<_, Vec<u8>>(0));
                if current.as_deref() != expect {
                    return Err(TxError::Abort(changed()));
                }
                if expect.is_none() {
                    let stored = tx.execute(
                        "INSERT INTO keys (label, record) VALUES ($1, $2) ON CONFLICT (label) DO NOTHING",
                        &[&label, &record],
                    )?;
                    if stored == 0 {
                        return Err(TxError::Abort(changed()));
                    }
                } else {
                    tx.execute("UPDATE keys SET record = $2 WHERE label = $1", &[&label, &record])?;
                }
            } else {
                tx.execute(
                    "INSERT INTO keys (label, record) VALUES ($1, $2)
                     ON CONFLICT (label) DO UPDATE SET record = EXCLUDED.record",
                    &[&label, &record],
                )?;
            }
            super::audit::append(tx, now, events.clone())?;
            tx.execute("SELECT pg_notify('hcert_keys', $1)", &[&label])?;
            Ok(())
        })?;
        crate::metrics::get().audit_entries.inc_by(n);
        Ok(())
    }

    /// The trusted CSCAs.
    pub fn csca_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows = self.read(|c| c.query("SELECT fingerprint, der FROM cscas ORDER BY fingerprint", &[]))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Records the CSCAs of the first start.
    pub fn put_csca_records(
        &self,
        cscas: &[(String, Vec<u8>)],
        events: Vec<Event>,
    ) -> Result<(), StoreError> {
        let now = super::store::unix_now();
        let n = events.len() as u64;
        self.tx(|tx| {
            for (fp, der) in cscas {
                tx.execute(
                    "INSERT INTO cscas (fingerprint, der) VALUES ($1, $2) ON CONFLICT (fingerprint) DO NOTHING",
                    &[fp, der],
                )?;
            }
            super::audit::append(tx, now, events.clone())?;
            tx.execute("SELECT pg_notify('hcert_keys', 'cscas')", &[])?;
            Ok(())
        })?;
        crate::metrics::get().audit_entries.inc_by(n);
        Ok(())
    }

    /// A CSCA waiting for a second officer.
    pub fn csca_pending(&self, fingerprint: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self.read(|c| {
            c.query_opt("SELECT record FROM csca_pending WHERE fingerprint = $1", &[&fingerprint])
        })?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Every CSCA waiting for a second officer.
    pub fn csca_pendings(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows =
            self.read(|c| c.query("SELECT fingerprint, record FROM csca_pending ORDER BY fingerprint", &[]))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Sets or clears a pending CSCA and/or trusts one, with the audit events.
    pub fn update_csca(
        &self,
        fingerprint: &str,
        pending: Option<&[u8]>,
        trusted: Option<&[u8]>,
        events: Vec<Event>,
    ) -> Result<(), StoreError> {
        let now = super::store::unix_now();
        let n = events.len() as u64;
        self.tx(|tx| {
            match pending {
                Some(p) => tx.execute(
                    "INSERT INTO csca_pending (fingerprint, record) VALUES ($1, $2)
                     ON CONFLICT (fingerprint) DO UPDATE SET record = EXCLUDED.record",
                    &[&fingerprint, &p],
                )?,
                None => tx.execute("DELETE FROM csca_pending WHERE fingerprint = $1", &[&fingerprint])?,
            };
            if let Some(der) = trusted {
                tx.execute(
                    "INSERT INTO cscas (fingerprint, der) VALUES ($1, $2)
                     ON CONFLICT (fingerprint) DO UPDATE SET der = EXCLUDED.der",
                    &[&fingerprint, &der],
                )?;
            }
            super::audit::append(tx, now, events.clone())?;
            tx.execute("SELECT pg_notify('hcert_keys', 'cscas')", &[])?;
            Ok(())
        })?;
        crate::metrics::get().audit_entries.inc_by(n);
        Ok(())
    }
}

fn changed() -> StoreError {
    StoreError::Conflict("the key changed meanwhile: read it again and retry")
}
