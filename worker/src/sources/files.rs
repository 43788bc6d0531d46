//! JSON-lines input for local mode: a file (resumable at a byte offset) or standard input.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Where a line came from, for dead letters and checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Byte offset of the start of the next unread line.
    pub offset: u64,
    /// Number of lines read so far (1-based line number of the last line read).
    pub line: u64,
}

/// A JSON-lines reader that knows the byte offset of every line. Lines are handed out as
/// slices of its own read buffer: each byte is copied once, by the read.
pub struct LineReader {
    reader: Box<dyn Read + Send>,
    position: Position,
    buf: Vec<u8>,
    /// The unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
}

/// A read fills this much, and the scanner reads it right after: small enough to still be
/// in the core's L2 cache then (1 MiB was not: 2M actions, join alone, 3 pairs +3-8%).
const READ_BUFFER: usize = 1 << 18;

impl LineReader {
    /// Opens a file at a saved position (`None` for stdin, which cannot be resumed).
    pub fn open(path: Option<&Path>, at: &Position) -> std::io::Result<LineReader> {
        let reader: Box<dyn Read + Send> = match path {
            Some(p) => {
                let mut file = File::open(p)?;
                file.seek(SeekFrom::Start(at.offset))?;
                Box::new(file)
            }
            None => Box::new(std::io::stdin()),
        };
        Ok(LineReader {
            reader,
            position: at.clone(),
            buf: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
            eof: false,
        })
    }

    /// The next line without its line ending, the byte offset it starts at and its 1-based
    /// line number; `None` at the end. Blank lines are skipped (they are not messages).
    pub fn next_line(&mut self) -> std::io::Result<Option<(&[u8], u64, u64)>> {
        let (from, to, offset) = loop {
            let unread = &self.buf[self.start..self.end];
            let (len, consumed) = match memchr::memchr(b'\n', unread) {
                Some(i) => (i, i + 1),
                None if self.eof && !unread.is_empty() => (unread.len(), unread.len()),
                None if self.eof => return Ok(None),
                None => {
                    self.fill()?;
                    continue;
                }
            };
            let from = self.start;
            let offset = self.position.offset;
            self.start += consumed;
            self.position.offset += consumed as u64;
            self.position.line += 1;
            let mut to = from + len;
            while to > from && self.buf[to - 1] == b'\r' {
                to -= 1;
            }
            if !self.buf[from..to].iter().all(u8::is_ascii_whitespace) {
                break (from, to, offset);
            }
        };
        Ok(Some((&self.buf[from..to], offset, self.position.line)))
    }

    /// Reads more after the unread bytes (moved to the front; the buffer doubles when one
    /// line fills it).
    fn fill(&mut self) -> std::io::Result<()> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = loop {
            match self.reader.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                read => break read?,
            }
        };
        self.end += n;
        self.eof = n == 0;
        Ok(())
    }

    pub fn position(&self) -> &Position {
        &self.position
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines across buffer boundaries, a line longer than the buffer, CRLF, blank lines and
    /// a last line without a newline: every line whole, at its offset.
    #[test]
    fn lines_come_whole_with_their_offsets() {
        let long = "x".repeat(READ_BUFFER * 2 + 7);
        let mut text = String::new();
        let mut expected = Vec::new();
        for i in 0..40_000 {
            let line = match i {
                7 => long.clone(),
                9 => String::new(),
                _ => format!("{{\"n\":{i}}}"),
            };
            let offset = text.len() as u64;
            text.push_str(&line);
            text.push_str(if i % 3 == 0 { "\r\n" } else { "\n" });
            if !line.is_empty() {
                expected.push((line, offset, i as u64 + 1));
            }
        }
        text.push_str("{\"last\":true}");
        expected.push(("{\"last\":true}".into(), (text.len() - 13) as u64, 40_001));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, &text).unwrap();
        let mut reader = LineReader::open(Some(&path), &Position::default()).unwrap();
        let mut got = Vec::new();
        while let Some((line, offset, n)) = reader.next_line().unwrap() {
            got.push((String::from_utf8(line.to_vec()).unwrap(), offset, n));
        }
        assert_eq!(got.len(), expected.len());
        assert_eq!(got, expected);
        assert_eq!(reader.position().offset, text.len() as u64);

        // Resuming at a saved position reads on from there.
        let at = Position {
            offset: expected[100].1,
            line: expected[100].2 - 1,
        };
        let mut resumed = LineReader::open(Some(&path), &at).unwrap();
        let first = resumed
            .next_line()
            .unwrap()
            .map(|(l, o, n)| (l.to_vec(), o, n));
        assert_eq!(
            first,
            Some((
                expected[100].0.as_bytes().to_vec(),
                expected[100].1,
                expected[100].2
            ))
        );
    }
}
