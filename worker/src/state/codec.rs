//! Binary encodings of state entries and timer keys (compact, and order-preserving where
//! RocksDB iterates).

use crate::join::{Done, Entry, Outcome, PartState, Pending};

const TAG_PENDING: u8 = 0;
const TAG_DONE: u8 = 1;

/// i64 → u64 whose big-endian bytes sort like the i64.
fn ordered(t: i64) -> u64 {
    (t as u64) ^ (1 << 63)
}

fn unordered(u: u64) -> i64 {
    (u ^ (1 << 63)) as i64
}

/// Timer key: key group (2 bytes) + deadline (8, order-preserving) + tracking number.
pub fn timer_key(state_key: &[u8], deadline: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(state_key.len() + 8);
    key.extend_from_slice(&state_key[..2.min(state_key.len())]);
    key.extend_from_slice(&ordered(deadline).to_be_bytes());
    key.extend_from_slice(state_key.get(2..).unwrap_or_default());
    key
}

/// The smallest timer key of `key_group` at `deadline`.
pub fn timer_prefix(key_group: u16, deadline: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(10);
    key.extend_from_slice(&key_group.to_be_bytes());
    key.extend_from_slice(&ordered(deadline).to_be_bytes());
    key
}

/// The deadline and the state key of a timer key.
pub fn split_timer_key(key: &[u8]) -> Option<(i64, Vec<u8>)> {
    let deadline = unordered(u64::from_be_bytes(key.get(2..10)?.try_into().ok()?));
    let mut state_key = Vec::with_capacity(key.len() - 8);
    state_key.extend_from_slice(&key[..2]);
    state_key.extend_from_slice(&key[10..]);
    Some((deadline, state_key))
}

pub fn encode_entry(entry: &Entry, buf: &mut Vec<u8>) {
    match entry {
        Entry::Pending(p) => {
            buf.push(TAG_PENDING);
            buf.extend_from_slice(&p.deadline.to_be_bytes());
            buf.push(p.mask());
            for part in p.parts.iter().flatten() {
                buf.extend_from_slice(&part.event_time.to_be_bytes());
                buf.extend_from_slice(&(part.fields.len() as u32).to_be_bytes());
                buf.extend_from_slice(part.fields.as_bytes());
            }
        }
        Entry::Done(d) => {
            buf.push(TAG_DONE);
            buf.extend_from_slice(&d.until.to_be_bytes());
            buf.push(match d.outcome {
                Outcome::Completed => 0,
                Outcome::Expired => 1,
            });
            buf.push(d.parts);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "truncated: wanted {n} bytes, {} left",
                self.0.len()
            ));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().map_err(|_| "i64")?,
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().map_err(|_| "u32")?,
        ))
    }
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry, String> {
    let mut r = Reader(bytes);
    match r.u8()? {
        TAG_PENDING => {
            let deadline = r.i64()?;
            let mask = r.u8()?;
            let mut parts: [Option<PartState>; 3] = [None, None, None];
            for (i, slot) in parts.iter_mut().enumerate() {
                if mask & (1 << i) != 0 {
                    let event_time = r.i64()?;
                    let len = r.u32()? as usize;
                    let fields = std::str::from_utf8(r.take(len)?).map_err(|e| e.to_string())?;
                    *slot = Some(PartState {
                        event_time,
                        fields: fields.into(),
                    });
                }
            }
            Ok(Entry::Pending(Pending { deadline, parts }))
        }
        TAG_DONE => read_done(&mut r).map(Entry::Done),
        other => Err(format!("unknown entry tag {other}")),
    }
}

/// A stored entry's marker, without decoding a pending entry's parts (a restore reads every
/// stored entry to know which keys are stored).
pub fn decode_marker(bytes: &[u8]) -> Result<Option<Done>, String> {
    let mut r = Reader(bytes);
    match r.u8()? {
        TAG_PENDING => Ok(None),
        TAG_DONE => read_done(&mut r).map(Some),
        other => Err(format!("unknown entry tag {other}")),
    }
}

fn read_done(r: &mut Reader<'_>) -> Result<Done, String> {
    let until = r.i64()?;
    let outcome = match r.u8()? {
        0 => Outcome::Completed,
        1 => Outcome::Expired,
        other => return Err(format!("unknown outcome {other}")),
    };
    Ok(Done {
        until,
        outcome,
        parts: r.u8()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let pending = Entry::Pending(Pending {
            deadline: -5,
            parts: [
                Some(PartState {
                    event_time: 7,
                    fields: "\"a\":1".into(),
                }),
                None,
                Some(PartState {
                    event_time: 9,
                    fields: "".into(),
                }),
            ],
        });
        let done = Entry::Done(Done {
            until: 1 << 40,
            outcome: Outcome::Expired,
            parts: 0b101,
        });
        for entry in [pending, done] {
            let mut buf = Vec::new();
            encode_entry(&entry, &mut buf);
            assert_eq!(decode_entry(&buf).unwrap(), entry);
            let marker = match &entry {
                Entry::Done(done) => Some(*done),
                Entry::Pending(_) => None,
            };
            assert_eq!(decode_marker(&buf).unwrap(), marker);
            assert!(
                decode_entry(&buf[..buf.len() - 1]).is_err(),
                "truncation is detected"
            );
        }
    }

    #[test]
    fn timer_keys_sort_by_group_then_deadline() {
        let key = |kg: u16, tn: &str| crate::join::state_key(kg, tn);
        let mut keys = [
            timer_key(&key(1, "b"), 5),
            timer_key(&key(0, "z"), 100),
            timer_key(&key(1, "a"), -3),
            timer_key(&key(1, "a"), 5),
        ];
        keys.sort();
        let decoded: Vec<_> = keys.iter().map(|k| split_timer_key(k).unwrap()).collect();
        assert_eq!(decoded[0], (100, key(0, "z").to_vec()));
        assert_eq!(decoded[1], (-3, key(1, "a").to_vec()));
        assert_eq!(decoded[2], (5, key(1, "a").to_vec()));
        assert_eq!(decoded[3], (5, key(1, "b").to_vec()));
        assert!(timer_prefix(1, 5) <= keys[2] && keys[2] < timer_prefix(1, 6));
    }
}
