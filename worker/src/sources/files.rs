//! JSON-lines input for local mode: a file (resumable at a byte offset) or standard input.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;

/// Where a line came from, for dead letters and checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Byte offset of the start of the next unread line.
    pub offset: u64,
    /// Number of lines read so far (1-based line number of the last line read).
    pub line: u64,
}

/// A JSON-lines reader that knows the byte offset of every line.
pub struct LineReader {
    reader: Box<dyn BufRead + Send>,
    position: Position,
    buf: Vec<u8>,
    done: bool,
}

impl LineReader {
    /// Opens a file at a saved position (`None` for stdin, which cannot be resumed).
    pub fn open(path: Option<&Path>, at: &Position) -> std::io::Result<LineReader> {
        let reader: Box<dyn BufRead + Send> = match path {
            Some(p) => {
                let mut file = File::open(p)?;
                file.seek(SeekFrom::Start(at.offset))?;
                Box::new(BufReader::with_capacity(1 << 20, file))
            }
            None => Box::new(BufReader::with_capacity(1 << 20, std::io::stdin())),
        };
        Ok(LineReader {
            reader,
            position: at.clone(),
            buf: Vec::with_capacity(4096),
            done: false,
        })
    }

    /// The next line without its line ending, the byte offset it starts at and its 1-based
    /// line number; `None` at the end. Blank lines are skipped (they are not messages).
    pub fn next_line(&mut self) -> std::io::Result<Option<(&[u8], u64, u64)>> {
        loop {
            if self.done {
                return Ok(None);
            }
            self.buf.clear();
            let start = self.position.offset;
            let n = self.reader.read_until(b'\n', &mut self.buf)?;
            if n == 0 {
                self.done = true;
                return Ok(None);
            }
            self.position.offset += n as u64;
            self.position.line += 1;
            let mut end = self.buf.len();
            while end > 0 && matches!(self.buf[end - 1], b'\n' | b'\r') {
                end -= 1;
            }
            if self.buf[..end].iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some((&self.buf[..end], start, self.position.line)));
        }
    }

    pub fn position(&self) -> &Position {
        &self.position
    }
}
