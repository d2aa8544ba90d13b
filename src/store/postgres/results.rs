//! Streaming a batch's results from PostgreSQL in record order, a page of blocks per query, so a
//! large batch is never held in memory. Rows exist only once committed, so nothing is released
//! before it is durable.

use std::sync::Arc;

use super::batches::context;
use super::store::{PgStore, count};
use crate::store::StoreError;
use crate::store::backend::ResultLines;
use crate::store::batch::parse_batch_id;
use crate::store::block::decode_block;
use crate::store::seal::{self, DataKey, Purpose};

/// Result blocks read per query.
const PAGE: i64 = 64;

impl PgStore {
    /// The issuer's batch's results so far, or `None`.
    pub fn results(&self, issuer_id: &str, batch_id: &str) -> Result<Option<ResultLines>, StoreError> {
        let Some(id) = parse_batch_id(batch_id) else { return Ok(None) };
        let row = self.read(|c| {
            c.query_opt(
                "SELECT seq, data_key FROM batches WHERE id = $1 AND issuer = $2",
                &[&&id[..], &issuer_id],
            )
        })?;
        let Some(row) = row else { return Ok(None) };
        let seq: i64 = row.get(0);
        let key = self.data_key(count(seq), row.get::<_, &[u8]>(1))?;
        Ok(Some(Box::new(Lines {
            store: self.clone(),
            seq,
            id,
            key,
            next: 0,
            lines: Vec::new().into_iter(),
            ended: false,
        })))
    }
}

struct Lines {
    store: PgStore,
    seq: i64,
    id: [u8; 16],
    key: Arc<DataKey>,
    /// The first record of the next block to read.
    next: i32,
    lines: std::vec::IntoIter<Vec<u8>>,
    ended: bool,
}

impl Lines {
    /// Reads the next page of blocks into `lines`.
    fn page(&mut self) -> Result<(), StoreError> {
        let rows = self.store.read(|c| {
            c.query(
                "SELECT block, sealed FROM results WHERE batch_seq = $1 AND block >= $2 ORDER BY block LIMIT $3",
                &[&self.seq, &self.next, &PAGE],
            )
        })?;
        self.ended = (rows.len() as i64) < PAGE;
        let mut lines = Vec::new();
        for r in &rows {
            let block: i32 = r.get(0);
            let first = u32::try_from(block).map_err(|_| StoreError::Corrupt("a negative block".into()))?;
            let plain =
                seal::open(&self.key, &context(Purpose::Results, &self.id, first), r.get::<_, &[u8]>(1))?;
            lines.extend(decode_block(&plain)?.into_iter().map(|(_, line)| line.to_vec()));
            self.next = block.saturating_add(1);
        }
        self.lines = lines.into_iter();
        Ok(())
    }
}

impl Iterator for Lines {
    type Item = Result<Vec<u8>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(line) = self.lines.next() {
                return Some(Ok(line));
            }
            if self.ended {
                return None;
            }
            if let Err(e) = self.page() {
                self.ended = true;
                log::error!("store: a block of results cannot be read: {e}");
                return Some(Err(e));
            }
        }
    }
}
