//! Binary encoding of the process stage's stored instances: fixed-width little-endian,
//! several times smaller and faster than JSON (a checkpoint writes every changed instance).
//!
//! Version 2 starts with [`V2`] and stores each action's tracking-number fingerprint; version
//! 1 (no prefix: it starts with the key's length) stored the tracking number itself, and is
//! still read.

use super::instance::{Applied, DimensionIds, Instance, InstanceKey, tracking_fingerprint};
use crate::time::MaybeTime;

/// Starts a version-2 instance: as a version-1 key length it would be 4 GiB.
const V2: [u8; 5] = [0xff, 0xff, 0xff, 0xff, 2];

/// Reads fixed-width fields from the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes(1)?.first().copied()
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.bytes(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.bytes(n)?.to_vec()).ok()
    }
    fn option_i64(&mut self) -> Option<Option<i64>> {
        match self.u8()? {
            0 => Some(None),
            _ => Some(Some(self.i64()?)),
        }
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_option_i64(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

pub fn encode_instance(i: &Instance, out: &mut Vec<u8>) {
    out.extend_from_slice(&V2);
    put_string(out, &i.key);
    out.extend_from_slice(&i.key_group.to_le_bytes());
    out.extend_from_slice(&(i.actions.len() as u32).to_le_bytes());
    for a in &i.actions {
        out.extend_from_slice(&a.time.to_le_bytes());
        out.extend_from_slice(&a.tracking.to_le_bytes());
        out.extend_from_slice(&a.step.to_le_bytes());
        out.extend_from_slice(&a.outcomes.to_le_bytes());
    }
    out.extend_from_slice(&(i.dimensions.len() as u32).to_le_bytes());
    for d in &i.dimensions {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(&i.combo.to_le_bytes());
    put_option_i64(out, i.abandoned.get());
    put_option_i64(out, i.sla_alerted.get());
    out.extend_from_slice(&(i.breaches.len() as u32).to_le_bytes());
    for (step, deadline) in &i.breaches {
        out.extend_from_slice(&step.to_le_bytes());
        out.extend_from_slice(&deadline.to_le_bytes());
    }
}

pub fn decode_instance(bytes: &[u8]) -> Option<Instance> {
    let (v1, mut r) = match bytes.strip_prefix(&V2) {
        Some(rest) => (false, Reader(rest)),
        None => (true, Reader(bytes)),
    };
    let key = r.string()?;
    let key_group = r.u16()?;
    let n = r.u32()? as usize;
    let mut actions = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let time = r.i64()?;
        let tracking = match v1 {
            true => tracking_fingerprint(&r.string()?),
            false => r.u64()?,
        };
        actions.push(Applied {
            time,
            tracking,
            step: r.u16()?,
            outcomes: r.u64()?,
        });
    }
    if v1 {
        // Version 1 sorted same-time actions by tracking number, not by its fingerprint.
        actions.sort_unstable();
    }
    let n = r.u32()? as usize;
    let mut dimensions = DimensionIds::new();
    for _ in 0..n {
        dimensions.push(r.u32()?);
    }
    let mut instance = Instance {
        key: InstanceKey::new(&key),
        key_group,
        actions,
        dimensions,
        combo: r.u32()?,
        abandoned: r.option_i64()?.into(),
        sla_alerted: r.option_i64()?.into(),
        breaches: Box::default(),
        armed_sla: MaybeTime::NONE,
        armed_timeout: MaybeTime::NONE,
        unsaved: false,
    };
    // Instances written before breaches were part of them end here.
    if !r.0.is_empty() {
        let n = r.u32()? as usize;
        let mut breaches = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            breaches.push((r.u16()?, r.i64()?));
        }
        instance.breaches = breaches.into();
    }
    r.0.is_empty().then_some(instance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_round_trip_and_older_ones_still_read() {
        let instance = Instance {
            key: "A-1".into(),
            key_group: 7,
            actions: vec![
                Applied {
                    time: 1_000,
                    tracking: tracking_fingerprint("T-1"),
                    step: 0,
                    outcomes: 0,
                },
                Applied {
                    time: 61_000,
                    tracking: tracking_fingerprint("T-2"),
                    step: 1,
                    outcomes: 0b10,
                },
            ],
            dimensions: [3, 0, 1].into_iter().collect(),
            combo: 9,
            abandoned: MaybeTime::NONE,
            sla_alerted: MaybeTime::at(61_000),
            breaches: Box::new([(1, 3_661_000)]),
            armed_sla: MaybeTime::NONE,
            armed_timeout: MaybeTime::NONE,
            unsaved: false,
        };
        let mut buf = Vec::new();
        encode_instance(&instance, &mut buf);
        assert_eq!(decode_instance(&buf).as_ref(), Some(&instance));
        assert_eq!(decode_instance(&buf[..buf.len() - 1]), None, "truncated");

        // Written before breaches were stored: the same bytes without them.
        let without = Instance {
            breaches: Box::default(),
            ..instance
        };
        let mut old = Vec::new();
        encode_instance(&without, &mut old);
        old.truncate(old.len() - 4);
        assert_eq!(decode_instance(&old), Some(without.clone()));

        // Version 1: no prefix, tracking numbers as strings (two at one time, in string
        // order), no breaches.
        let mut v1 = Vec::new();
        put_string(&mut v1, "A-1");
        v1.extend_from_slice(&7u16.to_le_bytes());
        v1.extend_from_slice(&3u32.to_le_bytes());
        for (time, tracking, step, outcomes) in [
            (1_000i64, "T-1", 0u16, 0u64),
            (61_000, "T-2", 1, 0b10),
            (61_000, "T-3", 1, 0),
        ] {
            v1.extend_from_slice(&time.to_le_bytes());
            put_string(&mut v1, tracking);
            v1.extend_from_slice(&step.to_le_bytes());
            v1.extend_from_slice(&outcomes.to_le_bytes());
        }
        v1.extend_from_slice(&3u32.to_le_bytes());
        for d in [3u32, 0, 1] {
            v1.extend_from_slice(&d.to_le_bytes());
        }
        v1.extend_from_slice(&9u32.to_le_bytes());
        put_option_i64(&mut v1, None);
        put_option_i64(&mut v1, Some(61_000));
        let read = decode_instance(&v1).unwrap();
        let mut actions = without.actions.clone();
        actions.push(Applied {
            time: 61_000,
            tracking: tracking_fingerprint("T-3"),
            step: 1,
            outcomes: 0,
        });
        actions.sort();
        assert_eq!(read, Instance { actions, ..without });
    }
}
