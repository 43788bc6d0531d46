//! Batches on the keyed topic. The shuffle frames the messages of one source bound for one
//! key group into one record (header [`BATCH_HEADER`] = the source's name), so that the
//! per-record work of the clients and the brokers (queues, wrappers, acknowledgements) is
//! paid once per batch instead of once per message: it, not the join, was most of the
//! worker's time. Each entry keeps the raw message and where it was read, so a message the
//! join rejects is dead-lettered with its source position, as without batches.
//!
//! An entry: payload length (u32 LE), the index of its topic in the source's `topics`
//! (u16 LE), its partition (i32 LE) and offset (i64 LE), the payload.

use std::time::Duration;

/// Header of a batch record; its value is the source's name.
pub const BATCH_HEADER: &str = "weft-batch";
/// A batch this large is sent at once.
pub const BATCH_BYTES: usize = 64 << 10;
/// Longest a message waits in a batch that is not full (a latency bound: the join's own
/// windows are seconds).
pub const LINGER: Duration = Duration::from_millis(20);

const ENTRY_HEADER: usize = 4 + 2 + 4 + 8;

/// One message of a batch, and where it was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub topic: u16,
    pub partition: i32,
    pub offset: i64,
    pub payload: &'a [u8],
}

/// Appends an entry to a batch.
pub fn push(batch: &mut Vec<u8>, entry: &Entry<'_>) {
    // A Kafka record is far below 4 GiB; the source's size limit dead-letters more first.
    let len = u32::try_from(entry.payload.len()).unwrap_or(u32::MAX);
    batch.extend_from_slice(&len.to_le_bytes());
    batch.extend_from_slice(&entry.topic.to_le_bytes());
    batch.extend_from_slice(&entry.partition.to_le_bytes());
    batch.extend_from_slice(&entry.offset.to_le_bytes());
    batch.extend_from_slice(&entry.payload[..len as usize]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed batch: entry at byte {at} of {len} is cut off")]
pub struct BatchError {
    pub at: usize,
    pub len: usize,
}

/// The entries of a batch, in order; a malformed tail ends it with an error.
pub fn entries(batch: &[u8]) -> Entries<'_> {
    Entries { batch, at: 0 }
}

pub struct Entries<'a> {
    batch: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.batch.get(self.at..).filter(|r| !r.is_empty())?;
        let error = BatchError {
            at: self.at,
            len: self.batch.len(),
        };
        let entry = rest.get(..ENTRY_HEADER).and_then(|h| {
            let len = u32::from_le_bytes(h[0..4].try_into().ok()?) as usize;
            let payload = rest.get(ENTRY_HEADER..ENTRY_HEADER.checked_add(len)?)?;
            Some(Entry {
                topic: u16::from_le_bytes(h[4..6].try_into().ok()?),
                partition: i32::from_le_bytes(h[6..10].try_into().ok()?),
                offset: i64::from_le_bytes(h[10..18].try_into().ok()?),
                payload,
            })
        });
        match entry {
            Some(e) => {
                self.at += ENTRY_HEADER + e.payload.len();
                Some(Ok(e))
            }
            None => {
                self.at = self.batch.len();
                Some(Err(error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_in_order_and_a_cut_tail_is_an_error() {
        let written = [
            Entry {
                topic: 0,
                partition: 7,
                offset: 1 << 40,
                payload: b"{\"a\":1}",
            },
            Entry {
                topic: 3,
                partition: 0,
                offset: 0,
                payload: b"",
            },
        ];
        let mut batch = Vec::new();
        written.iter().for_each(|e| push(&mut batch, e));
        let read: Vec<_> = entries(&batch).collect::<Result<_, _>>().unwrap();
        assert_eq!(read, written);
        assert_eq!(entries(&[]).count(), 0);

        let cut = &batch[..batch.len() - 1];
        let read: Vec<_> = entries(cut).collect();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0], Ok(written[0]));
        assert_eq!(
            read[1],
            Err(BatchError {
                at: ENTRY_HEADER + 7,
                len: cut.len()
            })
        );
        assert_eq!(
            entries(b"{\"stray\":1}").count(),
            1,
            "not a batch: one error"
        );
    }
}
