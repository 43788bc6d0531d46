//! Outputs of local mode: JSON-lines files whose lengths are part of every checkpoint. On
//! restart each file is cut back to its checkpointed length, so what a crashed run wrote after
//! its last checkpoint is replaced, not repeated: the files hold every record exactly once.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

pub mod kafka;

/// What a direct write's memory address, file offset and length are multiples of: the
/// logical block size of the devices we run on (512 or 4096 bytes).
const BLOCK: usize = 4096;
/// Bytes gathered before one write.
const WINDOW: usize = 1 << 20;
/// Full windows the writer thread may have queued: the caller waits beyond that.
const WINDOWS_IN_FLIGHT: usize = 2;

/// An append-only JSON-lines file that knows how many bytes it holds.
///
/// Records gather in a 1 MiB window; a full window goes to a writer thread of the file's
/// own, which writes it with `O_DIRECT`, past the page cache, while the caller fills the
/// next. An output is written once and read by someone else later: copying it into the page
/// cache was the largest system time of a local run (on this project's VM, buffered writes
/// take 0.2–2 s of system time per GB, depending on the host, direct ones 0.1 s), and the
/// caller does not wait for the device either. A flush writes the whole blocks gathered directly and the last, partial
/// block through the cache; the next direct write of that block replaces it. A filesystem
/// that refuses `O_DIRECT` (tmpfs) gets every write through the cache.
pub struct JsonLinesFile {
    target: Arc<Target>,
    window: Window,
    /// Bytes of the window in use: the file's bytes from `offset` on.
    filled: usize,
    /// The file offset of the window's first byte; a multiple of `BLOCK` while direct.
    offset: u64,
    /// Started at the first full window.
    writer: Option<Writer>,
}

/// The file, as the caller and the writer thread write it.
struct Target {
    file: File,
    /// The same file opened with `O_DIRECT`, if the filesystem took the flag.
    direct: Option<File>,
    /// Cleared when a direct write is refused (a device with bigger blocks, or a filesystem
    /// that took the flag at open but not the write): from then on through the cache.
    direct_works: AtomicBool,
}

impl Target {
    fn is_direct(&self) -> bool {
        self.direct.is_some() && self.direct_works.load(Ordering::Relaxed)
    }

    /// Writes `bytes` at `offset`: directly when both are whole blocks.
    fn write(&self, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        if let Some(direct) = &self.direct
            && self.is_direct()
            && bytes.len().is_multiple_of(BLOCK)
            && offset.is_multiple_of(BLOCK as u64)
        {
            match direct.write_all_at(bytes, offset) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.direct_works.store(false, Ordering::Relaxed)
                }
                written => return written,
            }
        }
        self.file.write_all_at(bytes, offset)
    }
}

/// `WINDOW` bytes at a block-aligned address, inside a slightly larger allocation.
struct Window {
    memory: Box<[u8]>,
    start: usize,
}

impl Window {
    fn new() -> Window {
        let memory = vec![0u8; WINDOW + BLOCK].into_boxed_slice();
        // (An offset the platform cannot give makes direct writes fail with EINVAL: then
        // they go through the cache.)
        let start = memory.as_ptr().align_offset(BLOCK).min(BLOCK);
        Window { memory, start }
    }

    fn bytes(&self) -> &[u8] {
        &self.memory[self.start..self.start + WINDOW]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.memory[self.start..self.start + WINDOW]
    }
}

/// The thread that writes a file's full windows, and the windows it gives back.
struct Writer {
    jobs: Option<SyncSender<(Window, u64)>>,
    written: Receiver<(Window, std::io::Result<()>)>,
    in_flight: usize,
    spare: Vec<Window>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(target: Arc<Target>) -> std::io::Result<Writer> {
        let (jobs, queue) = sync_channel::<(Window, u64)>(WINDOWS_IN_FLIGHT);
        let (give_back, written) = sync_channel(WINDOWS_IN_FLIGHT + 1);
        let thread = std::thread::Builder::new()
            .name("output-writer".into())
            .spawn(move || {
                for (window, offset) in queue {
                    let result = target.write(window.bytes(), offset);
                    if give_back.send((window, result)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Writer {
            jobs: Some(jobs),
            written,
            in_flight: 0,
            spare: Vec::new(),
            thread: Some(thread),
        })
    }

    fn stopped() -> std::io::Error {
        std::io::Error::other("the output's writer thread stopped")
    }

    /// Waits for the oldest window sent to be written, and takes it back.
    fn take_back(&mut self) -> std::io::Result<Window> {
        let (window, result) = self.written.recv().map_err(|_| Self::stopped())?;
        self.in_flight -= 1;
        result.map(|()| window)
    }

    /// Waits until every window sent is written.
    fn wait(&mut self) -> std::io::Result<()> {
        while self.in_flight > 0 {
            let window = self.take_back()?;
            self.spare.push(window);
        }
        Ok(())
    }

    /// Sends the full `window` to be written at `offset`, putting an empty one in its place.
    fn send(&mut self, window: &mut Window, offset: u64) -> std::io::Result<()> {
        let next = match self.spare.pop() {
            Some(spare) => spare,
            None if self.in_flight < WINDOWS_IN_FLIGHT => Window::new(),
            None => self.take_back()?,
        };
        let full = std::mem::replace(window, next);
        let jobs = self.jobs.as_ref().ok_or_else(Self::stopped)?;
        jobs.send((full, offset)).map_err(|_| Self::stopped())?;
        self.in_flight += 1;
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The thread writes what it was sent, then ends with its queue.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl JsonLinesFile {
    /// Opens `path` for appending after cutting it to `len` bytes (0 starts it afresh).
    pub fn open(path: &Path, len: u64) -> std::io::Result<JsonLinesFile> {
        Self::open_with(path, len, true)
    }

    /// [`JsonLinesFile::open`], through the page cache only unless `direct`.
    fn open_with(path: &Path, len: u64, direct: bool) -> std::io::Result<JsonLinesFile> {
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
        let direct = direct
            .then(|| {
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)
                    .ok()
            })
            .flatten();
        let mut window = Window::new();
        // The window starts at the block holding the end: its bytes are read back, to be
        // written again with the block.
        let tail = match direct {
            Some(_) => (len % BLOCK as u64) as usize,
            None => 0,
        };
        let offset = len - tail as u64;
        file.read_exact_at(&mut window.bytes_mut()[..tail], offset)?;
        Ok(JsonLinesFile {
            target: Arc::new(Target {
                file,
                direct,
                direct_works: AtomicBool::new(true),
            }),
            window,
            filled: tail,
            offset,
            writer: None,
        })
    }

    /// Appends one record (which ends with a newline).
    #[inline]
    pub fn write(&mut self, record: &[u8]) -> std::io::Result<()> {
        let end = self.filled + record.len();
        if end < WINDOW {
            self.window.bytes_mut()[self.filled..end].copy_from_slice(record);
            self.filled = end;
            return Ok(());
        }
        self.write_across(record)
    }

    /// [`JsonLinesFile::write`] for a record that fills the window.
    #[inline(never)]
    fn write_across(&mut self, mut record: &[u8]) -> std::io::Result<()> {
        while !record.is_empty() {
            let n = record.len().min(WINDOW - self.filled);
            self.window.bytes_mut()[self.filled..self.filled + n].copy_from_slice(&record[..n]);
            self.filled += n;
            record = &record[n..];
            if self.filled == WINDOW {
                let writer = match &mut self.writer {
                    Some(writer) => writer,
                    None => self.writer.insert(Writer::start(Arc::clone(&self.target))?),
                };
                writer.send(&mut self.window, self.offset)?;
                self.offset += WINDOW as u64;
                self.filled = 0;
            }
        }
        Ok(())
    }

    /// Hands everything written so far to the OS; returns the file's length.
    pub fn flush(&mut self) -> std::io::Result<u64> {
        if let Some(writer) = &mut self.writer {
            writer.wait()?;
        }
        let whole = match self.target.is_direct() {
            true => self.filled - self.filled % BLOCK,
            false => self.filled,
        };
        if whole > 0 {
            self.target
                .write(&self.window.bytes()[..whole], self.offset)?;
            self.window.bytes_mut().copy_within(whole..self.filled, 0);
            self.offset += whole as u64;
            self.filled -= whole;
        }
        if self.filled > 0 {
            // The partial block through the cache; it stays in the window.
            let tail = &self.window.bytes()[..self.filled];
            self.target.file.write_all_at(tail, self.offset)?;
        }
        Ok(self.offset + self.filled as u64)
    }
}

impl Drop for JsonLinesFile {
    fn drop(&mut self) {
        // As a `BufWriter` does: what was written reaches the file (a checkpoint's reopening
        // cuts away whatever came after it).
        let _ = self.flush();
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

    /// Writes records across many windows with flushes at awkward places, a record bigger
    /// than a window, then reopens at the flushed length as a restart does.
    fn holds_every_record_in_order_and_reopens_cut_back(direct: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut file = JsonLinesFile::open_with(&path, 0, direct).unwrap();
        let mut expected = Vec::new();
        let write = |file: &mut JsonLinesFile, expected: &mut Vec<u8>, record: &[u8]| {
            file.write(record).unwrap();
            expected.extend_from_slice(record);
        };
        for i in 0..60_000 {
            let record = format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(i % 50));
            write(&mut file, &mut expected, record.as_bytes());
            if [20_000, 20_001, 45_000].contains(&i) {
                let len = file.flush().unwrap();
                assert_eq!(std::fs::read(&path).unwrap().len() as u64, len);
            }
        }
        let big = format!("{{\"big\":\"{}\"}}\n", "y".repeat(WINDOW * 2 + 100));
        write(&mut file, &mut expected, big.as_bytes());
        // Up to a block boundary exactly, and a flush there.
        let to_boundary = BLOCK - expected.len() % BLOCK;
        write(&mut file, &mut expected, &vec![b' '; to_boundary]);
        assert_eq!(file.flush().unwrap() % BLOCK as u64, 0);
        write(&mut file, &mut expected, b"{\"last\":true}\n");
        let len = file.flush().unwrap();
        assert_eq!(len, expected.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), expected);

        // What was written after a checkpoint is cut away on reopening at its length.
        file.write(b"{\"after\":true}\n").unwrap();
        drop(file);
        let mut file = JsonLinesFile::open_with(&path, len, direct).unwrap();
        file.write(b"{\"again\":true}\n").unwrap();
        assert_eq!(file.flush().unwrap(), len + 15);
        // The reopened file's first full window rewrites the block it started in.
        file.write(&vec![b'z'; WINDOW]).unwrap();
        assert_eq!(file.flush().unwrap(), len + 15 + WINDOW as u64);
        drop(file);
        expected.extend_from_slice(b"{\"again\":true}\n");
        expected.extend_from_slice(&vec![b'z'; WINDOW]);
        assert_eq!(std::fs::read(&path).unwrap(), expected);

        let error = JsonLinesFile::open_with(&path, expected.len() as u64 + 1, direct)
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("changed outside Weft"),
            "{error}"
        );
    }

    #[test]
    fn a_direct_file_holds_every_record_in_order_and_reopens_cut_back() {
        holds_every_record_in_order_and_reopens_cut_back(true);
    }

    #[test]
    fn a_file_through_the_page_cache_does_the_same() {
        holds_every_record_in_order_and_reopens_cut_back(false);
    }
}
