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

pub struct CheckpointStore {
    db: Database,
}

/// What a saved checkpoint holds.
pub struct Loaded {
    pub position: Option<Position>,
    pub entries: Vec<IndexEntry>,
}

impl CheckpointStore {
    /// Opens (or creates) the index and loads it. Any error means: rebuild from the log.
    pub fn open(path: &Path) -> Result<(CheckpointStore, Loaded), String> {
        let db = Database::create(path).map_err(|e| e.to_string())?;
        let store = CheckpointStore { db };
        let loaded = store.load().map_err(|e| e.to_string())?;
        Ok((store, loaded))
    }

    fn load(&self) -> Result<Loaded, Box<dyn std::error::Error>> {
        let txn = self.db.begin_read()?;
        let position = match txn.open_table(META) {
            Ok(meta) => match meta.get(CHECKPOINT_KEY)? {
                Some(v) => Some(postcard::from_bytes::<Position>(v.value())?),
                None => None,
            },
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let mut entries = Vec::new();
        if position.is_some() {
            let table = txn.open_table(MESSAGES)?;
            for row in table.iter()? {
                let (_, v) = row?;
                entries.push(postcard::from_bytes::<IndexEntry>(v.value())?);
            }
        }
        Ok(Loaded { position, entries })
    }

    /// Saves changed entries (`None` = removed) and the position they reflect, atomically and
    /// durably (redb's default durability fsyncs on commit).
    pub fn save(
        &self,
        changes: &[(QueueId, Option<IndexEntry>)],
        position: Position,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(MESSAGES)?;
            for (id, entry) in changes {
                match entry {
                    Some(e) => {
                        table.insert(id.0, postcard::to_stdvec(e)?.as_slice())?;
                    }
                    None => {
                        table.remove(id.0)?;
                    }
                }
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(CHECKPOINT_KEY, postcard::to_stdvec(&position)?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }
}
