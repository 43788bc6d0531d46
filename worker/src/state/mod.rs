//! RocksDB state: the cold tier of the join and the checkpoint record.
//!
//! Column families:
//! - `join`: entry per state key (key group BE u16 + tracking number): a pending entry (or a
//!   dedupe marker, as earlier versions stored them).
//! - `timers`: key group BE u16 + deadline (order-preserving u64) + tracking number: the
//!   cold pending entries' timers in deadline order per key group. The value is `[1]` for
//!   the timer of a marker, which only state written by earlier versions has.
//! - `markers`: the join's dedupe markers (24 bytes each, `join::markers`). A *run* is the
//!   markers one checkpoint made in one key group: key group BE u16 + run number BE u64, the
//!   markers back to back; it is deleted by the checkpoint whose watermark passed its last
//!   expiry. Markers that left memory are also stored one by one for lookups: key group BE
//!   u16 + fingerprint (16 bytes), the marker's last 8 bytes; a compaction filter drops those
//!   that expired before their key group's watermark at a written checkpoint (readers treat
//!   an expired marker as absent anyway).
//! - `process`: one process instance per key: key group BE u16 + definition index BE u16 +
//!   instance key; the value is the instance (binary, `process::codec`).
//! - `aggregates`: empty. Earlier versions stored the process stage's window aggregates here;
//!   they are rebuilt from the instances on restore now, and what is left is deleted on open.
//! - `meta`: the checkpoint record (input positions, output lengths, counters, watermarks).
//!
//! Every key starts with the key group, so a key group's state is a contiguous range in each
//! family: that is what a rescale exports, ingests and deletes.
//!
//! A checkpoint's batch is built and written on a thread of its own while the caller goes on
//! with the next events (it was a quarter of a local run's main thread). Every read, and the
//! next checkpoint, first waits for it ([`Store::settle`]): what the join evicted into that
//! batch is read back only once it is in RocksDB. The batch holds the checkpoint record with
//! the state, so a crash while it is being written restores the checkpoint before it.

pub mod budget;
pub mod codec;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions,
    WriteBatch, WriteOptions,
};

use crate::join::markers::{ENCODED_MARKER, Fingerprint, Marker};
use crate::join::{Change, ColdStore, ColdTimer, Done, Entry, JoinChanges, StateError, StoredKind};
use crate::process::ProcessChanges;

const CF_JOIN: &str = "join";
const CF_MARKERS: &str = "markers";
const CF_TIMERS: &str = "timers";
const CF_META: &str = "meta";
const CF_PROCESS: &str = "process";
const CF_AGGREGATES: &str = "aggregates";
const FAMILIES: [&str; 6] = [
    CF_JOIN,
    CF_TIMERS,
    CF_META,
    CF_PROCESS,
    CF_AGGREGATES,
    CF_MARKERS,
];
const CHECKPOINT_KEY: &[u8] = b"checkpoint";

/// One worker's RocksDB.
pub struct Store {
    db: Arc<DB>,
    /// The checkpoint being written, if any.
    writing: Mutex<Option<JoinHandle<Result<(), StateError>>>>,
    /// Per key group, the watermark of the last written checkpoint: stored markers that
    /// expired before it are dropped when compacted.
    horizons: Horizons,
}

type Horizons = Arc<Mutex<Vec<i64>>>;

/// Makes the `join` family's compaction filters: each works with the horizons as they are
/// when its compaction starts.
struct ExpiredMarkers(Horizons);

impl rocksdb::compaction_filter_factory::CompactionFilterFactory for ExpiredMarkers {
    type Filter = ExpiredMarkersFilter;

    fn create(
        &mut self,
        _: rocksdb::compaction_filter_factory::CompactionFilterContext,
    ) -> ExpiredMarkersFilter {
        let horizons = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        ExpiredMarkersFilter(horizons)
    }

    fn name(&self) -> &std::ffi::CStr {
        c"weft-expired-markers"
    }
}

struct ExpiredMarkersFilter(Vec<i64>);

impl rocksdb::compaction_filter::CompactionFilter for ExpiredMarkersFilter {
    fn filter(
        &mut self,
        _level: u32,
        key: &[u8],
        value: &[u8],
    ) -> rocksdb::compaction_filter::Decision {
        // Markers stored one by one only: runs are deleted by the checkpoints.
        let until = point_marker(key, value).map(|(_, marker)| marker.until());
        let horizon = key
            .get(..2)
            .map(|kg| usize::from(u16::from_be_bytes([kg[0], kg[1]])))
            .and_then(|kg| self.0.get(kg).copied());
        match (until, horizon) {
            (Some(until), Some(horizon)) if until < horizon => {
                rocksdb::compaction_filter::Decision::Remove
            }
            _ => rocksdb::compaction_filter::Decision::Keep,
        }
    }

    fn name(&self) -> &std::ffi::CStr {
        c"weft-expired-markers"
    }
}

fn store_err(e: rocksdb::Error) -> StateError {
    StateError::Store(e.to_string())
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StateError> {
        let horizons = Horizons::default();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let family = |name: &str| {
            let mut cf = Options::default();
            cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
            // Memtables count against the worker's memory: 5 families at RocksDB's default
            // 64 MiB each would be most of a pod's budget.
            cf.set_write_buffer_size(16 << 20);
            cf.set_max_write_buffer_number(2);
            if name == CF_JOIN || name == CF_MARKERS {
                // Point lookups: a bloom filter answers most misses from memory.
                let mut table = rocksdb::BlockBasedOptions::default();
                table.set_bloom_filter(10.0, false);
                cf.set_block_based_table_factory(&table);
            }
            if name == CF_MARKERS {
                cf.set_compaction_filter_factory(ExpiredMarkers(Arc::clone(&horizons)));
            }
            ColumnFamilyDescriptor::new(name, cf)
        };
        let db = DB::open_cf_descriptors(&opts, path, FAMILIES.map(family)).map_err(store_err)?;
        let store = Store {
            db: Arc::new(db),
            writing: Mutex::new(None),
            horizons,
        };
        store.forget_stored_aggregates()?;
        Ok(store)
    }

    /// Earlier versions stored the process stage's window aggregates; they are rebuilt from
    /// the instances now, and what such a version left is deleted.
    fn forget_stored_aggregates(&self) -> Result<(), StateError> {
        let aggregates = self.cf(CF_AGGREGATES)?;
        if self
            .db
            .iterator_cf(aggregates, IteratorMode::Start)
            .next()
            .is_some()
        {
            self.db
                .delete_range_cf(aggregates, &[][..], &[0xffu8; 16][..])
                .map_err(store_err)?;
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily, StateError> {
        family(&self.db, name)
    }

    /// The last checkpoint record, if any.
    pub fn checkpoint(&self) -> Result<Option<Vec<u8>>, StateError> {
        self.settle()?;
        self.db
            .get_cf(self.cf(CF_META)?, CHECKPOINT_KEY)
            .map_err(store_err)
    }

    /// Starts writing the join's and the process stage's state changes and the checkpoint
    /// record in one atomic batch, on the writer thread, once the previous checkpoint is
    /// written. With `clear_join`, the join's state is known to be empty: its families are
    /// cleared whole (puts in `changes` are still written). [`Store::settle`] waits for it
    /// and reports how it went.
    pub fn write_checkpoint(
        &self,
        join: JoinChanges,
        process: ProcessChanges,
        record: Vec<u8>,
        clear_join: bool,
    ) -> Result<(), StateError> {
        let mut writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(previous) = writing.take() {
            finished(previous)?;
        }
        let db = Arc::clone(&self.db);
        let horizons = Arc::clone(&self.horizons);
        let writer = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                let JoinChanges {
                    changes,
                    marker_runs,
                    run,
                    expired_runs,
                    marker_points,
                    first_key_group,
                    watermarks,
                } = join;
                let markers = MarkerChanges {
                    runs: &marker_runs,
                    run,
                    expired_runs: &expired_runs,
                    points: &marker_points,
                };
                write_batch(&db, changes, &markers, &process, &record, clear_join)?;
                // Only now: a restore from an earlier checkpoint could still need them.
                let mut horizons = horizons.lock().unwrap_or_else(PoisonError::into_inner);
                let end = usize::from(first_key_group) + watermarks.len();
                if horizons.len() < end {
                    horizons.resize(end, i64::MIN);
                }
                horizons[usize::from(first_key_group)..end].copy_from_slice(&watermarks);
                Ok(())
            })
            .map_err(|e| StateError::Store(format!("starting the checkpoint writer: {e}")))?;
        *writing = Some(writer);
        Ok(())
    }

    /// Whether no checkpoint is being written ([`Store::settle`] would not wait).
    pub fn is_settled(&self) -> bool {
        self.writing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_none_or(JoinHandle::is_finished)
    }

    /// Waits until the checkpoint being written, if any, is in RocksDB; its error, if it
    /// failed.
    pub fn settle(&self) -> Result<(), StateError> {
        let mut writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        match writing.take() {
            Some(writer) => finished(writer),
            None => Ok(()),
        }
    }
}

/// Waits for a checkpoint writer.
fn finished(writer: JoinHandle<Result<(), StateError>>) -> Result<(), StateError> {
    writer
        .join()
        .unwrap_or_else(|_| Err(StateError::Store("the checkpoint writer panicked".into())))
}

fn family<'a>(db: &'a DB, name: &str) -> Result<&'a ColumnFamily, StateError> {
    db.cf_handle(name)
        .ok_or_else(|| StateError::Store(format!("column family {name} missing")))
}

/// The join's markers in a checkpoint (see [`JoinChanges`]).
struct MarkerChanges<'c> {
    runs: &'c [(u16, Vec<Marker>)],
    run: u64,
    expired_runs: &'c [(u16, u64)],
    points: &'c [(u16, Vec<Marker>)],
}

impl MarkerChanges<'_> {
    fn write(&self, batch: &mut WriteBatch, family: &ColumnFamily, cleared: bool) {
        let mut value = Vec::new();
        for (kg, markers) in self.runs {
            value.clear();
            markers.iter().for_each(|m| m.encode(&mut value));
            batch.put_cf(family, run_key(*kg, self.run), &value);
        }
        if !cleared {
            for (kg, run) in self.expired_runs {
                batch.delete_cf(family, run_key(*kg, *run));
            }
        }
        write_points(batch, family, self.points);
    }
}

/// Markers stored one by one, in key order.
fn write_points(batch: &mut WriteBatch, family: &ColumnFamily, points: &[(u16, Vec<Marker>)]) {
    let mut sorted: Vec<(u16, &Marker)> = points
        .iter()
        .flat_map(|(kg, markers)| markers.iter().map(|m| (*kg, m)))
        .collect();
    sorted.sort_unstable_by_key(|(kg, m)| (*kg, m.fingerprint()));
    let mut value = Vec::with_capacity(ENCODED_MARKER);
    for (kg, marker) in sorted {
        value.clear();
        marker.encode(&mut value);
        batch.put_cf(family, point_key(kg, marker.fingerprint()), &value[16..]);
    }
}

/// Key of a run of markers: key group, run number.
fn run_key(key_group: u16, run: u64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..2].copy_from_slice(&key_group.to_be_bytes());
    key[2..].copy_from_slice(&run.to_be_bytes());
    key
}

/// Bytes of a marker's key when it is stored alone: key group, fingerprint.
const POINT_KEY: usize = 18;

fn point_key(key_group: u16, fingerprint: Fingerprint) -> [u8; POINT_KEY] {
    let mut key = [0u8; POINT_KEY];
    key[..2].copy_from_slice(&key_group.to_be_bytes());
    key[2..].copy_from_slice(&fingerprint.to_bytes());
    key
}

/// A marker stored alone: its key group and itself (`None` for anything else).
fn point_marker(key: &[u8], value: &[u8]) -> Option<(u16, Marker)> {
    if key.len() != POINT_KEY || value.len() != ENCODED_MARKER - 16 {
        return None;
    }
    let mut bytes = [0u8; ENCODED_MARKER];
    bytes[..16].copy_from_slice(&key[2..]);
    bytes[16..].copy_from_slice(value);
    let marker = Marker::decode_all(&bytes)?.next()?;
    Some((u16::from_be_bytes([key[0], key[1]]), marker))
}

/// Builds a checkpoint's batch and writes it (see [`Store::write_checkpoint`]).
fn write_batch(
    db: &DB,
    mut changes: Vec<Change>,
    markers: &MarkerChanges<'_>,
    process: &ProcessChanges,
    record: &[u8],
    clear_join: bool,
) -> Result<(), StateError> {
    let cf = |name| family(db, name);
    let join = cf(CF_JOIN)?;
    let timers = cf(CF_TIMERS)?;
    let marker_family = cf(CF_MARKERS)?;
    // Each family's writes in key order: RocksDB's memtable inserts ascending keys far
    // faster than random ones (an eviction writes the whole hot tier at once). Sorted in
    // place, encoded straight into the batch: no second copy of the state.
    let mut batch = WriteBatch::default();
    if clear_join {
        // The join holds nothing any more (the end of a finite input): two range
        // tombstones instead of a delete per key, which for an input of millions of
        // actions would be a write batch of hundreds of MiB.
        for cf in [join, timers, marker_family] {
            batch.delete_range_cf(cf, &[][..], &[0xffu8; 16][..]);
        }
        changes.retain(|c| matches!(c, Change::Put { .. }));
    }
    markers.write(&mut batch, marker_family, clear_join);
    let mut buf = Vec::new();
    changes.sort_unstable_by(|a, b| change_key(a).cmp(change_key(b)));
    for change in changes.iter() {
        match change {
            Change::Put { key, entry, .. } => {
                buf.clear();
                codec::encode_entry(entry, &mut buf);
                batch.put_cf(join, key, &buf);
            }
            Change::Delete { key, .. } => batch.delete_cf(join, key),
        }
    }
    // Timer order (key group, deadline, tracking number), compared without building keys.
    changes.sort_unstable_by(|a, b| timer_order(a).cmp(&timer_order(b)));
    for change in changes.iter() {
        match change {
            Change::Put {
                key,
                entry,
                old_deadline,
            } => {
                // A stale timer goes before the new one (they may be the same key).
                if let Some(old) = old_deadline {
                    batch.delete_cf(timers, codec::timer_key(key, *old));
                }
                if let Entry::Pending(pending) = entry {
                    batch.put_cf(timers, codec::timer_key(key, pending.deadline), [0]);
                }
            }
            Change::Delete { key, deadline } => {
                batch.delete_cf(timers, codec::timer_key(key, *deadline));
            }
        }
    }
    let instances = cf(CF_PROCESS)?;
    if process.rewrite {
        // Keys start with the key group (u16): this covers them all.
        batch.delete_range_cf(instances, &[][..], &[0xffu8; 16][..]);
    }
    let mut sorted: Vec<&(Vec<u8>, Option<Vec<u8>>)> = process.instances.iter().collect();
    // Stable: of two changes of one key, the later is written later and wins.
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, value) in sorted {
        match value {
            Some(v) => batch.put_cf(instances, key, v),
            None => batch.delete_cf(instances, key),
        }
    }
    batch.put_cf(cf(CF_META)?, CHECKPOINT_KEY, record);
    let mut options = WriteOptions::default();
    // The WAL reaches the OS before write() returns: a killed process loses nothing;
    // fsync per checkpoint would only add protection against power loss.
    options.set_sync(false);
    db.write_opt(batch, &options).map_err(store_err)
}

impl Store {
    /// Bytes of the database's files (SST files, write-ahead log, manifest): what state
    /// costs on disk now, flushed or not. A file that goes while it is listed counts nothing.
    pub fn disk_bytes(&self) -> u64 {
        std::fs::read_dir(self.db.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.metadata().ok())
            .filter(|meta| meta.is_file())
            .map(|meta| meta.len())
            .sum()
    }

    /// Bytes of SST files (what state costs on disk after flushes and compactions).
    pub fn sst_bytes(&self) -> u64 {
        FAMILIES
            .iter()
            .filter_map(|name| self.db.cf_handle(name))
            .filter_map(|cf| {
                self.db
                    .property_int_value_cf(cf, "rocksdb.total-sst-files-size")
                    .ok()
                    .flatten()
            })
            .sum()
    }
}

impl Drop for Store {
    /// A checkpoint still being written is finished: callers that need its outcome call
    /// [`Store::settle`] first.
    fn drop(&mut self) {
        if let Err(e) = self.settle() {
            tracing::error!(error = %e, "the last checkpoint was not written");
        }
    }
}

fn timer_order(c: &Change) -> (&[u8], i64, &[u8]) {
    let (key, deadline) = match c {
        Change::Put { key, entry, .. } => (key.as_bytes(), entry.deadline()),
        Change::Delete { key, deadline } => (key.as_bytes(), *deadline),
    };
    (
        key.get(..2).unwrap_or_default(),
        deadline,
        key.get(2..).unwrap_or_default(),
    )
}

fn change_key(c: &Change) -> &[u8] {
    match c {
        Change::Put { key, .. } | Change::Delete { key, .. } => key,
    }
}

/// A stored key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

impl Store {
    /// Every stored process instance, as (key, value).
    pub fn process_instances(&self) -> Result<Vec<KeyValue>, StateError> {
        self.all(CF_PROCESS)
    }

    fn all(&self, family: &str) -> Result<Vec<KeyValue>, StateError> {
        self.settle()?;
        self.db
            .iterator_cf(self.cf(family)?, IteratorMode::Start)
            .map(|item| {
                item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(store_err)
            })
            .collect()
    }
}

impl ColdStore for Store {
    fn get(&self, key: &[u8]) -> Result<Option<Entry>, StateError> {
        self.settle()?;
        match self
            .db
            .get_pinned_cf(self.cf(CF_JOIN)?, key)
            .map_err(store_err)?
        {
            Some(bytes) => {
                codec::decode_entry(&bytes)
                    .map(Some)
                    .map_err(|detail| StateError::Corrupt {
                        key: key.to_vec(),
                        detail,
                    })
            }
            None => Ok(None),
        }
    }

    fn due(&self, key_group: u16, from: i64, before: i64) -> Result<Vec<ColdTimer>, StateError> {
        self.settle()?;
        let start = codec::timer_prefix(key_group, from);
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(codec::timer_prefix(key_group, before));
        let mut due = Vec::new();
        for item in self.db.iterator_cf_opt(
            self.cf(CF_TIMERS)?,
            read,
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (key, value) = item.map_err(store_err)?;
            let (deadline, state_key) =
                codec::split_timer_key(&key).ok_or_else(|| StateError::Corrupt {
                    key: key.to_vec(),
                    detail: "short timer key".into(),
                })?;
            due.push(ColdTimer {
                deadline,
                key: state_key,
                marker: value.first() == Some(&1),
            });
        }
        Ok(due)
    }

    fn get_marker(
        &self,
        key_group: u16,
        fingerprint: Fingerprint,
    ) -> Result<Option<Done>, StateError> {
        self.settle()?;
        let key = point_key(key_group, fingerprint);
        let value = self
            .db
            .get_pinned_cf(self.cf(CF_MARKERS)?, key)
            .map_err(store_err)?;
        match value {
            Some(value) => point_marker(&key, &value)
                .map(|(_, marker)| Some(marker.done()))
                .ok_or_else(|| StateError::Corrupt {
                    key: key.to_vec(),
                    detail: format!("a stored marker of {} bytes", value.len()),
                }),
            None => Ok(None),
        }
    }

    fn for_each_marker_run(
        &self,
        f: &mut dyn FnMut(u16, u64, &[Marker]),
    ) -> Result<(), StateError> {
        self.settle()?;
        let mut markers = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_MARKERS)?, IteratorMode::Start)
        {
            let (key, value) = item.map_err(store_err)?;
            if key.len() == POINT_KEY {
                continue;
            }
            let corrupt = |detail: &str| StateError::Corrupt {
                key: key.to_vec(),
                detail: detail.to_string(),
            };
            let (Some(kg), Some(run)) = (key.get(..2), key.get(2..10)) else {
                return Err(corrupt("a run key of the wrong length"));
            };
            let kg = u16::from_be_bytes([kg[0], kg[1]]);
            let run = u64::from_be_bytes(run.try_into().map_err(|_| corrupt("run number"))?);
            markers.clear();
            markers.extend(
                Marker::decode_all(&value).ok_or_else(|| corrupt("a run of partial markers"))?,
            );
            f(kg, run, &markers);
        }
        Ok(())
    }

    fn store_markers(&self, markers: &[(u16, Vec<Marker>)]) -> Result<(), StateError> {
        self.settle()?;
        let mut batch = WriteBatch::default();
        write_points(&mut batch, self.cf(CF_MARKERS)?, markers);
        self.db.write(batch).map_err(store_err)
    }

    fn for_each_entry(&self, f: &mut dyn FnMut(&[u8], StoredKind)) -> Result<(), StateError> {
        self.settle()?;
        for item in self.db.iterator_cf(self.cf(CF_JOIN)?, IteratorMode::Start) {
            let (key, value) = item.map_err(store_err)?;
            let kind = codec::decode_marker(&value)
                .map_err(|detail| StateError::Corrupt {
                    key: key.to_vec(),
                    detail,
                })?
                .map_or(StoredKind::Pending, StoredKind::Marker);
            f(&key, kind);
        }
        Ok(())
    }

    fn next_deadline(&self, key_group: u16, from: i64) -> Result<Option<i64>, StateError> {
        self.settle()?;
        let start = codec::timer_prefix(key_group, from);
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(codec::timer_prefix(key_group, i64::MAX));
        let mut iter = self.db.iterator_cf_opt(
            self.cf(CF_TIMERS)?,
            read,
            IteratorMode::From(&start, Direction::Forward),
        );
        match iter.next() {
            Some(item) => {
                let (key, _) = item.map_err(store_err)?;
                Ok(codec::split_timer_key(&key).map(|(deadline, _)| deadline))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::join::{Done, Outcome, PartState, Pending, StateKey};

    fn key(kg: u16, tn: &str) -> Vec<u8> {
        crate::join::state_key(kg, tn).to_vec()
    }

    fn legacy_marker(until: i64) -> Entry {
        Entry::Done(Done {
            until,
            outcome: Outcome::Completed,
            parts: 0b111,
        })
    }

    fn pending(deadline: i64) -> Entry {
        Entry::Pending(Pending {
            deadline,
            parts: [
                Some(PartState {
                    event_time: deadline - 10,
                    fields: "\"a\":1".into(),
                }),
                None,
                None,
            ],
        })
    }

    fn puts(
        entries: &[(&[u8], &Entry)],
        first_key_group: u16,
        watermarks: Vec<i64>,
    ) -> JoinChanges {
        JoinChanges {
            changes: entries
                .iter()
                .map(|(key, entry)| Change::Put {
                    key: StateKey::new(key),
                    entry: (*entry).clone(),
                    old_deadline: None,
                })
                .collect(),
            first_key_group,
            watermarks,
            ..JoinChanges::default()
        }
    }

    #[test]
    fn what_a_checkpoint_wrote_is_read_back_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for round in 0..20u8 {
            let key = key(7, &format!("T-{round}"));
            // Pending entries have a timer, markers none.
            let entry = if round % 2 == 0 {
                pending(1_000 + i64::from(round))
            } else {
                legacy_marker(1_000 + i64::from(round))
            };
            let record = vec![b'0' + round % 10];
            store
                .write_checkpoint(
                    puts(&[(&key, &entry)], 7, vec![0]),
                    ProcessChanges::default(),
                    record.clone(),
                    false,
                )
                .unwrap();
            // Reads wait for the writer: no read sees the state before the batch.
            assert_eq!(store.get(&key).unwrap(), Some(entry));
            assert_eq!(
                store.due(7, 0, i64::MAX).unwrap().len(),
                usize::from(round) / 2 + 1
            );
            assert_eq!(store.checkpoint().unwrap(), Some(record));
        }
        store.settle().unwrap();
        assert!(store.is_settled());
    }

    #[test]
    fn disk_bytes_count_what_a_checkpoint_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let before = store.disk_bytes();
        let big = PartState {
            event_time: 1_000,
            fields: format!(r#""note":"{}""#, "x".repeat(100_000)).into(),
        };
        let entry = Entry::Pending(Pending {
            deadline: 2_000,
            parts: [Some(big), None, None],
        });
        store
            .write_checkpoint(
                puts(&[(&key(7, "T-big"), &entry)], 7, vec![0]),
                ProcessChanges::default(),
                b"1".to_vec(),
                false,
            )
            .unwrap();
        store.settle().unwrap();
        // In the write-ahead log (not flushed yet) or in an SST file: on disk either way.
        assert!(
            store.disk_bytes() >= before + 100_000,
            "{before} -> {}",
            store.disk_bytes()
        );
    }

    fn marker(fp: u8, until: i64) -> Marker {
        Marker::new(
            Fingerprint::of(&[fp]),
            &Done {
                until,
                outcome: Outcome::Completed,
                parts: 0b111,
            },
        )
    }

    #[test]
    fn runs_of_markers_are_read_back_and_deleted_when_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let checkpoint = |runs: Vec<(u16, Vec<Marker>)>, run: u64, expired: Vec<(u16, u64)>| {
            let changes = JoinChanges {
                marker_runs: runs,
                run,
                expired_runs: expired,
                first_key_group: 3,
                watermarks: vec![0, 0],
                ..JoinChanges::default()
            };
            store
                .write_checkpoint(changes, ProcessChanges::default(), b"r".to_vec(), false)
                .unwrap();
        };
        checkpoint(
            vec![
                (3, vec![marker(1, 10), marker(2, 20)]),
                (4, vec![marker(3, 5)]),
            ],
            0,
            vec![],
        );
        checkpoint(vec![(3, vec![marker(4, 30)])], 1, vec![(4, 0)]);
        let mut runs = Vec::new();
        store
            .for_each_marker_run(&mut |kg, run, markers| runs.push((kg, run, markers.to_vec())))
            .unwrap();
        assert_eq!(
            runs,
            [
                (3, 0, vec![marker(1, 10), marker(2, 20)]),
                (3, 1, vec![marker(4, 30)]),
            ]
        );
    }

    #[test]
    fn compaction_drops_markers_that_expired_before_a_written_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (expired, live, other_group) = (marker(1, 1_000), marker(2, 5_000), marker(3, 1_000));
        let waiting = key(3, "pending");
        let mut changes = puts(&[(&waiting[..], &pending(500))], 3, vec![2_000, 900]);
        // Key group 3's watermark passed 1000 at this checkpoint; key group 4's did not.
        changes.marker_points = vec![(3, vec![expired, live]), (4, vec![other_group])];
        store
            .write_checkpoint(changes, ProcessChanges::default(), b"1".to_vec(), false)
            .unwrap();
        store.settle().unwrap();
        let markers = store.cf(CF_MARKERS).unwrap();
        store.db.flush_cf(markers).unwrap();
        store
            .db
            .compact_range_cf(markers, None::<&[u8]>, None::<&[u8]>);
        let get = |kg, m: Marker| store.get_marker(kg, m.fingerprint()).unwrap();
        assert_eq!(get(3, expired), None, "expired: dropped");
        assert_eq!(get(3, live), Some(live.done()));
        assert_eq!(get(4, other_group), Some(other_group.done()));
        assert_eq!(get(4, live), None, "another key group's");
        assert_eq!(
            store.get(&waiting).unwrap(),
            Some(pending(500)),
            "pending entries stay"
        );
        let mut kinds = Vec::new();
        store
            .for_each_entry(&mut |key, kind| kinds.push((key.to_vec(), kind)))
            .unwrap();
        assert_eq!(kinds, [(waiting.clone(), StoredKind::Pending)]);
    }
}
