//! The hot tier's default budget: a share of the memory the worker may use.
//!
//! A fixed default fits one size of pod only: too small for a 4 GiB worker, whose state then
//! goes through RocksDB while the memory sits idle, and what spilling saves is then less than
//! the checkpoint's write path costs (the write batch and the memtables hold a copy of what
//! moves; docs/benchmarks.md). Like Flink's managed memory, the budget is a fraction of the
//! process's memory: its container's limit (the operator passes it through the downward API;
//! else the cgroup's), or the machine's memory outside a container.

use std::path::Path;

/// The hot tier's share of the memory limit: the rest is for what the budget does not count
/// (allocator slack, the checkpoint's batch and RocksDB's memtables, the process stage, I/O
/// buffers), which together came to about as much again at peak.
const SHARE_DIVISOR: u64 = 4;
/// Never below this: a worker with less memory than four times this runs anyway, spilling
/// early.
pub const MIN_HOT_BYTES: u64 = 64 << 20;
/// Never above this: a restore reads markers back into up to half the budget, and more than
/// a few GiB of them would hold a restarting worker up for minutes.
pub const MAX_HOT_BYTES: u64 = 4 << 30;

/// Without a memory limit to go by (no cgroup files, no `/proc`): the budget sized for the
/// 1 GiB pod.
pub const FALLBACK_HOT_BYTES: usize = 256 << 20;

/// Where the memory limit came from, for the log and the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitSource {
    /// Given: `--memory-limit-mib` / `WEFT_MEMORY_LIMIT_MIB` (the operator sets it from the
    /// container's `limits.memory`).
    Given,
    /// The cgroup's limit (v2 `memory.max`, v1 `memory.limit_in_bytes`).
    Cgroup,
    /// No limit: the machine's memory (`MemTotal` in `/proc/meminfo`).
    Machine,
}

/// A memory limit and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub source: LimitSource,
}

/// The hot tier's budget under a memory limit: a quarter of it, within
/// [`MIN_HOT_BYTES`]..=[`MAX_HOT_BYTES`].
pub fn hot_budget(limit: u64) -> usize {
    let bytes = (limit / SHARE_DIVISOR).clamp(MIN_HOT_BYTES, MAX_HOT_BYTES);
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// The default budget: [`hot_budget`] of [`memory_limit`], else [`FALLBACK_HOT_BYTES`]; and
/// the limit it went by.
pub fn default_hot_budget(given_mib: Option<u64>) -> (usize, Option<MemoryLimit>) {
    let limit = memory_limit(given_mib);
    (
        limit.map_or(FALLBACK_HOT_BYTES, |l| hot_budget(l.bytes)),
        limit,
    )
}

/// The memory limit of this process: `given_mib` if set, else its cgroup's limit, else the
/// machine's memory; `None` when none can be read (not Linux).
pub fn memory_limit(given_mib: Option<u64>) -> Option<MemoryLimit> {
    memory_limit_under(given_mib, Path::new("/"))
}

/// [`memory_limit`] with the files read under `root` (tests give a directory of their own).
fn memory_limit_under(given_mib: Option<u64>, root: &Path) -> Option<MemoryLimit> {
    if let Some(mib) = given_mib {
        return Some(MemoryLimit {
            bytes: mib.saturating_mul(1 << 20),
            source: LimitSource::Given,
        });
    }
    let read = |path: &str| std::fs::read_to_string(root.join(path)).ok();
    let cgroup = [
        "sys/fs/cgroup/memory.max",
        "sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .into_iter()
    .find_map(|path| read(path).as_deref().and_then(cgroup_limit));
    if let Some(bytes) = cgroup {
        return Some(MemoryLimit {
            bytes,
            source: LimitSource::Cgroup,
        });
    }
    read("proc/meminfo")
        .as_deref()
        .and_then(mem_total)
        .map(|bytes| MemoryLimit {
            bytes,
            source: LimitSource::Machine,
        })
}

/// A cgroup memory limit file's limit in bytes; `None` for no limit (v2's `max`, v1's
/// page-rounded `i64::MAX`) or text that is not a number.
fn cgroup_limit(text: &str) -> Option<u64> {
    let bytes: u64 = text.trim().parse().ok()?;
    // v1 writes "no limit" as i64::MAX rounded down to a page; anything near it is no limit.
    (bytes < 1 << 60).then_some(bytes)
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(kib.saturating_mul(1024)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("dirs");
            std::fs::write(path, text).expect("write");
        }
        dir
    }

    const MEMINFO: &str = "MemTotal:       24684084 kB\nMemFree:         5425000 kB\n";

    #[test]
    fn a_quarter_of_the_limit_within_bounds() {
        assert_eq!(hot_budget(4 << 30), 1 << 30);
        assert_eq!(hot_budget(2 << 30), 512 << 20);
        assert_eq!(hot_budget(128 << 20) as u64, MIN_HOT_BYTES);
        assert_eq!(hot_budget(64 << 30) as u64, MAX_HOT_BYTES);
    }

    #[test]
    fn a_given_limit_wins() {
        let root = root_with(&[("sys/fs/cgroup/memory.max", "1073741824\n")]);
        let limit = memory_limit_under(Some(4096), root.path());
        assert_eq!(
            limit,
            Some(MemoryLimit {
                bytes: 4 << 30,
                source: LimitSource::Given
            })
        );
    }

    #[test]
    fn the_cgroup_limit_then_the_machine() {
        let v2 = root_with(&[
            ("sys/fs/cgroup/memory.max", "2147483648\n"),
            ("proc/meminfo", MEMINFO),
        ]);
        assert_eq!(
            memory_limit_under(None, v2.path()),
            Some(MemoryLimit {
                bytes: 2 << 30,
                source: LimitSource::Cgroup
            })
        );
        let v1 = root_with(&[
            ("sys/fs/cgroup/memory/memory.limit_in_bytes", "536870912\n"),
            ("proc/meminfo", MEMINFO),
        ]);
        assert_eq!(
            memory_limit_under(None, v1.path()).map(|l| l.bytes),
            Some(512 << 20)
        );
        // No limit in either version: the machine's memory.
        let unlimited = root_with(&[
            ("sys/fs/cgroup/memory.max", "max\n"),
            (
                "sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
            ("proc/meminfo", MEMINFO),
        ]);
        assert_eq!(
            memory_limit_under(None, unlimited.path()),
            Some(MemoryLimit {
                bytes: 24684084 * 1024,
                source: LimitSource::Machine
            })
        );
        let nothing = root_with(&[]);
        assert_eq!(memory_limit_under(None, nothing.path()), None);
    }

    #[test]
    fn meminfo_without_a_unit_or_total_is_not_read() {
        assert_eq!(mem_total("MemTotal: 1024\n"), None);
        assert_eq!(mem_total("MemFree: 1024 kB\n"), None);
        assert_eq!(mem_total("MemTotal: lots kB\n"), None);
    }
}
