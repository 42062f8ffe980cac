//! The index checkpoint in redb: every queued message's envelope and log location, plus the log
//! position the checkpoint reflects. Replay starts there; the log remains the source of truth.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Envelope, QueueId};

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CHECKPOINT_KEY: &str = "checkpoint";

/// A position in the log: segment number and byte offset within it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Where a message record lies in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
    /// Whole record length, header included.
    pub len: u64,
    /// Offset of the trace header within the record; the body follows it.
    pub content_offset: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub envelope: Envelope,
    pub loc: Location,
}

/// Why the checkpoint could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the spool index is open in another process")]
    InUse,
    #[error("{0}")]
    Unreadable(String),
}

/// A checkpoint could not be read or written (the log stays the source of truth: a failed
/// checkpoint costs a longer replay, never a message).
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("redb transaction: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("redb table: {0}")]
    Table(#[from] redb::TableError),
    #[error("redb storage: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("redb commit: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("checkpoint encoding: {0}")]
    Encoding(#[from] postcard::Error),
}

pub struct CheckpointStore {
    db: Database,
}

/// What a saved checkpoint holds: the log position it reflects (the entries are read with
/// [`CheckpointStore::for_each_entry`], one at a time, so a million of them are never held twice).
pub struct Loaded {
    pub position: Option<Position>,
}

/// An entry as the checkpoint stores it.
pub fn encode_entry(e: &IndexEntry) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(e)
}

/// redb's page cache: the checkpoint is read once at start and written in the background, so a
/// large cache would only hold a copy of the index (redb's default is 1 GiB).
const CACHE_BYTES: usize = 16 << 20;

impl CheckpointStore {
    /// Opens (or creates) the index and reads its position. `Unreadable` means: rebuild from
    /// the log. `InUse` is never corruption (another process has it open): the caller stops.
    pub fn open(path: &Path) -> Result<(CheckpointStore, Loaded), OpenError> {
        let db =
            redb::Builder::new().set_cache_size(CACHE_BYTES).create(path).map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => OpenError::InUse,
                e => OpenError::Unreadable(e.to_string()),
            })?;
        let store = CheckpointStore { db };
        let position = store.position().map_err(|e| OpenError::Unreadable(e.to_string()))?;
        Ok((store, Loaded { position }))
    }

    fn position(&self) -> Result<Option<Position>, IndexError> {
        let txn = self.db.begin_read()?;
        match txn.open_table(META) {
            Ok(meta) => match meta.get(CHECKPOINT_KEY)? {
                Some(v) => Ok(Some(postcard::from_bytes::<Position>(v.value())?)),
                None => Ok(None),
            },
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Hands every saved entry to `f`, in id order.
    pub fn for_each_entry(&self, mut f: impl FnMut(IndexEntry)) -> Result<(), IndexError> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(MESSAGES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for row in table.iter()? {
            let (_, v) = row?;
            f(postcard::from_bytes::<IndexEntry>(v.value())?);
        }
        Ok(())
    }

    /// Saves changed entries (`None` = removed) and, if given, the position the checkpoint now
    /// reflects, in one durable transaction (redb's default durability fsyncs on commit).
    pub fn save(
        &self,
        changes: &[(QueueId, Option<Vec<u8>>)],
        position: Option<Position>,
    ) -> Result<(), IndexError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(MESSAGES)?;
            for (id, entry) in changes {
                match entry {
                    Some(e) => {
                        table.insert(id.0, e.as_slice())?;
                    }
                    None => {
                        table.remove(id.0)?;
                    }
                }
            }
            if let Some(position) = position {
                let mut meta = txn.open_table(META)?;
                meta.insert(CHECKPOINT_KEY, postcard::to_stdvec(&position)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}
