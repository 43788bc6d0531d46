//! Outputs of local mode: JSON-lines files whose lengths are part of every checkpoint. On
//! restart each file is cut back to its checkpointed length, so what a crashed run wrote after
//! its last checkpoint is replaced, not repeated: the files hold every record exactly once.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;

pub mod kafka;

/// An append-only JSON-lines file that knows how many bytes it holds.
pub struct JsonLinesFile {
    writer: BufWriter<File>,
    len: u64,
}

impl JsonLinesFile {
    /// Opens `path` for appending after cutting it to `len` bytes (0 starts it afresh).
    pub fn open(path: &Path, len: u64) -> std::io::Result<JsonLinesFile> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        let actual = file.metadata()?.len();
        if actual < len {
            return Err(std::io::Error::other(format!(
                "{} holds {actual} bytes but the checkpoint recorded {len}: the output was changed outside Weft",
                path.display()
            )));
        }
        file.set_len(len)?;
        let mut file = file;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(len))?;
        Ok(JsonLinesFile {
            writer: BufWriter::with_capacity(1 << 20, file),
            len,
        })
    }

    /// Appends one record (which ends with a newline).
    pub fn write(&mut self, record: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(record)?;
        self.len += record.len() as u64;
        Ok(())
    }

    /// Hands everything written so far to the OS; returns the file's length.
    pub fn flush(&mut self) -> std::io::Result<u64> {
        self.writer.flush()?;
        Ok(self.len)
    }
}

/// Where a dead-lettered message was read.
pub enum Origin<'a> {
    File {
        path: Option<&'a Path>,
        offset: u64,
        line: u64,
    },
    Kafka {
        topic: &'a str,
        partition: i32,
        offset: i64,
    },
}

/// Appends one dead-letter record and a newline: the reason, its detail, the source, the
/// position it was read at, and the message (its first 4 KiB, as text).
pub fn write_dead_letter(
    buf: &mut Vec<u8>,
    source: &str,
    origin: &Origin<'_>,
    raw: &[u8],
    rejection: &crate::sources::Rejection,
) {
    use crate::join::record::push_json_string;
    buf.extend_from_slice(b"{\"reason\":");
    push_json_string(buf, rejection.reason.as_str());
    buf.extend_from_slice(b",\"detail\":");
    push_json_string(buf, &rejection.detail);
    buf.extend_from_slice(b",\"source\":");
    push_json_string(buf, source);
    match origin {
        Origin::File { path, offset, line } => {
            buf.extend_from_slice(b",\"file\":");
            push_json_string(
                buf,
                &path.map_or_else(|| "-".to_string(), |p| p.display().to_string()),
            );
            buf.extend_from_slice(format!(",\"offset\":{offset},\"line\":{line}").as_bytes());
        }
        Origin::Kafka {
            topic,
            partition,
            offset,
        } => {
            buf.extend_from_slice(b",\"topic\":");
            push_json_string(buf, topic);
            buf.extend_from_slice(
                format!(",\"partition\":{partition},\"offset\":{offset}").as_bytes(),
            );
        }
    }
    buf.extend_from_slice(b",\"message\":");
    let shown = &raw[..raw.len().min(4096)];
    push_json_string(buf, &String::from_utf8_lossy(shown));
    buf.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_flushed_file_holds_every_record_in_order_and_reopens_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut file = JsonLinesFile::open(&path, 0).unwrap();
        let mut expected = Vec::new();
        // Records crossing several chunks, and a flush in the middle.
        for i in 0..60_000 {
            let record = format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(i % 50));
            file.write(record.as_bytes()).unwrap();
            expected.extend_from_slice(record.as_bytes());
            if i == 20_000 {
                let len = file.flush().unwrap();
                assert_eq!(std::fs::read(&path).unwrap().len() as u64, len);
            }
        }
        let len = file.flush().unwrap();
        assert_eq!(len, expected.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), expected);

        // What was written after a checkpoint is cut away on reopening at its length.
        file.write(b"{\"after\":true}\n").unwrap();
        drop(file);
        let mut file = JsonLinesFile::open(&path, len).unwrap();
        file.write(b"{\"again\":true}\n").unwrap();
        assert_eq!(file.flush().unwrap(), len + 15);
        drop(file);
        expected.extend_from_slice(b"{\"again\":true}\n");
        assert_eq!(std::fs::read(&path).unwrap(), expected);

        let error = JsonLinesFile::open(&path, len + 1000).err().unwrap();
        assert!(
            error.to_string().contains("changed outside Weft"),
            "{error}"
        );
    }
}
