//! Binary encoding of the process stage's stored instances: fixed-width little-endian,
//! several times smaller and faster than JSON (a checkpoint writes every changed instance).

use super::instance::{Applied, Instance};

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
    put_string(out, &i.key);
    out.extend_from_slice(&i.key_group.to_le_bytes());
    out.extend_from_slice(&(i.actions.len() as u32).to_le_bytes());
    for a in &i.actions {
        out.extend_from_slice(&a.time.to_le_bytes());
        put_string(out, &a.tracking_number);
        out.extend_from_slice(&a.step.to_le_bytes());
        out.extend_from_slice(&a.outcomes.to_le_bytes());
    }
    out.extend_from_slice(&(i.dimensions.len() as u32).to_le_bytes());
    for d in &i.dimensions {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(&i.combo.to_le_bytes());
    put_option_i64(out, i.abandoned);
    put_option_i64(out, i.sla_alerted);
    out.extend_from_slice(&(i.breaches.len() as u32).to_le_bytes());
    for (step, deadline) in &i.breaches {
        out.extend_from_slice(&step.to_le_bytes());
        out.extend_from_slice(&deadline.to_le_bytes());
    }
}

pub fn decode_instance(bytes: &[u8]) -> Option<Instance> {
    let mut r = Reader(bytes);
    let key = r.string()?;
    let key_group = r.u16()?;
    let n = r.u32()? as usize;
    let mut actions = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        actions.push(Applied {
            time: r.i64()?,
            tracking_number: r.string()?,
            step: r.u16()?,
            outcomes: r.u64()?,
        });
    }
    let n = r.u32()? as usize;
    let mut dimensions = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        dimensions.push(r.u32()?);
    }
    let mut instance = Instance {
        key: key.into(),
        key_group,
        actions,
        dimensions,
        combo: r.u32()?,
        abandoned: r.option_i64()?,
        sla_alerted: r.option_i64()?,
        breaches: Vec::new(),
        armed_sla: None,
        armed_timeout: None,
        unsaved: false,
    };
    // Instances written before breaches were part of them end here.
    if !r.0.is_empty() {
        let n = r.u32()? as usize;
        instance.breaches.reserve(n.min(64));
        for _ in 0..n {
            instance.breaches.push((r.u16()?, r.i64()?));
        }
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
                    tracking_number: "T-1".into(),
                    step: 0,
                    outcomes: 0,
                },
                Applied {
                    time: 61_000,
                    tracking_number: "T-2".into(),
                    step: 1,
                    outcomes: 0b10,
                },
            ],
            dimensions: vec![3, 0, 1],
            combo: 9,
            abandoned: None,
            sla_alerted: Some(61_000),
            breaches: vec![(1, 3_661_000)],
            armed_sla: None,
            armed_timeout: None,
            unsaved: false,
        };
        let mut buf = Vec::new();
        encode_instance(&instance, &mut buf);
        assert_eq!(decode_instance(&buf).as_ref(), Some(&instance));
        assert_eq!(decode_instance(&buf[..buf.len() - 1]), None, "truncated");

        // Written before breaches were stored: the same bytes without them.
        let without = Instance {
            breaches: Vec::new(),
            ..instance
        };
        let mut old = Vec::new();
        encode_instance(&without, &mut old);
        old.truncate(old.len() - 4);
        assert_eq!(decode_instance(&old), Some(without));
    }
}
