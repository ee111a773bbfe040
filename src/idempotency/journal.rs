//! What of the ledger survives a restart (`--state-dir`): which request ids may have created a
//! user without the caller hearing of it, so that a restarted gateway still looks up their
//! retries' 409s (SPEC section 7).
//!
//! One append-only file of fixed-size records, `in-doubt.journal`: `open` (an attempt is about
//! to be sent for this key) and `close` (the key's calls ended knowing their outcome). A key whose
//! last record is `open` is in doubt. A call's `open` is one `write` to the kernel before its
//! first attempt is sent, which outlives a crash or SIGKILL of the process (not a crash of the
//! machine: no fsync). `close` records wait and go out in the same `write` as the next `open`
//! (or when the journal is dropped, or when [`PENDING_MAX`] of them wait), so a call costs one
//! system call; a kill loses at most the waiting closes, and leaves their keys in doubt, which
//! only makes a retry's 409 be looked up. On start the file is read up to the first damaged or
//! torn record, what was read is kept, and the file is rewritten with the live keys alone; it is
//! rewritten the same way whenever it holds four times more records than live keys (and at least
//! `COMPACT_MIN`), so it stays bounded like the memory, and after a failed write, so that no
//! record follows a torn one.
//!
//! Knows files, keys and fingerprints; never HTTP, gRPC or emails.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use sha2::{Digest, Sha256};

use super::{Fingerprint, Key};

/// The file's name inside `--state-dir`.
pub const FILE_NAME: &str = "in-doubt.journal";
/// Bytes of one record: kind, key, fingerprint, time (ms since the epoch), checksum.
pub const RECORD_LEN: usize = 1 + 32 + 32 + 8 + 4;
/// The fewest records a file holds before it is compacted.
const COMPACT_MIN: u64 = 4096;
/// The most `close` records that wait for the next `open`.
pub const PENDING_MAX: usize = 64;

const OPEN: u8 = 1;
const CLOSE: u8 = 2;

/// A record as it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    open: bool,
    key: Key,
    fingerprint: Fingerprint,
    at_ms: u64,
}

impl Record {
    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[0] = if self.open { OPEN } else { CLOSE };
        out[1..33].copy_from_slice(&self.key.0);
        out[33..65].copy_from_slice(&self.fingerprint.0);
        out[65..73].copy_from_slice(&self.at_ms.to_le_bytes());
        let sum = checksum(&out[..73]);
        out[73..].copy_from_slice(&sum);
        out
    }

    /// `None` for a torn or damaged record.
    fn decode(bytes: &[u8; RECORD_LEN]) -> Option<Self> {
        if checksum(&bytes[..73]) != bytes[73..] {
            return None;
        }
        let open = match bytes[0] {
            OPEN => true,
            CLOSE => false,
            _ => return None,
        };
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[1..33]);
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(&bytes[33..65]);
        let mut at = [0u8; 8];
        at.copy_from_slice(&bytes[65..73]);
        Some(Self {
            open,
            key: Key(key),
            fingerprint: Fingerprint(fingerprint),
            at_ms: u64::from_le_bytes(at),
        })
    }
}

fn checksum(bytes: &[u8]) -> [u8; 4] {
    let digest = Sha256::digest(bytes);
    [digest[0], digest[1], digest[2], digest[3]]
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What reading a journal found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Keys in doubt, with their fingerprints, oldest first (ties in key order).
    pub in_doubt: Vec<(Key, Fingerprint)>,
    /// Whole records read.
    pub records: u64,
    /// Bytes after the last whole, sound record (a torn write or damage), not read.
    pub damaged_bytes: u64,
    /// Keys dropped because they were older than the TTL.
    pub expired: u64,
}

/// Keys open now, with their fingerprint and when (ms since the epoch) they were opened.
type Live = HashMap<Key, (Fingerprint, u64)>;

#[derive(Debug)]
struct Inner {
    file: File,
    live: Live,
    /// Records in the file.
    records: u64,
    /// Encoded `close` records not yet written.
    pending: Vec<u8>,
    /// A write failed, perhaps halfway: the file is rewritten before the next one.
    torn: bool,
}

/// The journal of one gateway process.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, keeping the keys opened within `ttl` and at most
    /// `capacity` of them (the newest).
    pub fn open(dir: &Path, ttl: Duration, capacity: usize) -> io::Result<(Self, Recovered)> {
        fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let (live, mut recovered) = read(&path, ttl)?;
        let mut live: Vec<_> = live.into_iter().collect();
        live.sort_by_key(|(_, (_, at))| *at);
        let excess = live.len().saturating_sub(capacity);
        recovered.expired += excess as u64;
        let live: HashMap<_, _> = live.into_iter().skip(excess).collect();
        let file = rewrite(&path, &live)?;
        let mut in_doubt: Vec<_> = live.iter().map(|(k, (f, at))| (*at, *k, *f)).collect();
        in_doubt.sort_by_key(|(at, key, _)| (*at, key.0));
        recovered.in_doubt = in_doubt.into_iter().map(|(_, k, f)| (k, f)).collect();
        let records = live.len() as u64;
        let journal = Self {
            path,
            ttl,
            capacity,
            inner: Mutex::new(Inner {
                file,
                live,
                records,
                pending: Vec::new(),
                torn: false,
            }),
        };
        Ok((journal, recovered))
    }

    /// Records that an attempt for `key` is about to be sent: written (with any waiting closes)
    /// before this returns.
    pub fn opened(&self, key: Key, fingerprint: Fingerprint) -> io::Result<()> {
        let at_ms = now_ms();
        let record = Record {
            open: true,
            key,
            fingerprint,
            at_ms,
        };
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.live.insert(key, (fingerprint, at_ms));
        inner.pending.extend_from_slice(&record.encode());
        self.flush(&mut inner)
    }

    /// Records that `key`'s calls ended knowing their outcome: written with the next `open`.
    pub fn closed(&self, key: Key) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((fingerprint, _)) = inner.live.remove(&key) else {
            return Ok(());
        };
        let record = Record {
            open: false,
            key,
            fingerprint,
            at_ms: now_ms(),
        };
        inner.pending.extend_from_slice(&record.encode());
        if inner.pending.len() < PENDING_MAX * RECORD_LEN {
            return Ok(());
        }
        self.flush(&mut inner)
    }

    /// Writes the waiting records in one `write`, then compacts when the file holds mostly
    /// settled keys (or a write failed).
    fn flush(&self, inner: &mut Inner) -> io::Result<()> {
        if !inner.torn {
            let written = inner.file.write_all(&inner.pending);
            let records = (inner.pending.len() / RECORD_LEN) as u64;
            inner.pending.clear();
            if let Err(e) = written {
                inner.torn = true;
                return Err(e);
            }
            inner.records += records;
            let live = inner.live.len() as u64;
            if inner.records < COMPACT_MIN.max(live * 4) {
                return Ok(());
            }
        }
        let horizon = now_ms().saturating_sub(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX));
        inner.live.retain(|_, (_, at)| *at >= horizon);
        if inner.live.len() > self.capacity {
            let mut by_age: Vec<_> = inner.live.iter().map(|(k, (_, at))| (*at, *k)).collect();
            by_age.sort_unstable_by_key(|(at, _)| *at);
            let excess = inner.live.len() - self.capacity;
            for (_, key) in by_age.into_iter().take(excess) {
                inner.live.remove(&key);
            }
        }
        // The live keys hold what the waiting records said.
        inner.pending.clear();
        inner.file = rewrite(&self.path, &inner.live)?;
        inner.torn = false;
        inner.records = inner.live.len() as u64;
        Ok(())
    }

    /// Keys open now.
    pub fn live(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .len()
    }

    /// Records in the file now.
    pub fn records(&self) -> u64 {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).records
    }
}

impl Drop for Journal {
    /// Writes the waiting closes, so that a gateway that stops in good order leaves no key in
    /// doubt that was not.
    fn drop(&mut self) {
        // After a torn record these land past it, where no reader looks.
        let inner = self.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        let _ = inner.file.write_all(&inner.pending);
    }
}

/// Reads the records up to the first damaged or torn one: the keys left open within `ttl`.
fn read(path: &Path, ttl: Duration) -> io::Result<(Live, Recovered)> {
    let mut recovered = Recovered::default();
    let mut live = HashMap::new();
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => {
            file.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((live, recovered)),
        Err(e) => return Err(e),
    }
    let mut sound = 0;
    for chunk in bytes.chunks_exact(RECORD_LEN) {
        let Some(record) = Record::decode(chunk.try_into().expect("exact chunks")) else {
            break;
        };
        sound += RECORD_LEN;
        recovered.records += 1;
        if record.open {
            live.insert(record.key, (record.fingerprint, record.at_ms));
        } else {
            live.remove(&record.key);
        }
    }
    recovered.damaged_bytes = (bytes.len() - sound) as u64;
    let horizon = now_ms().saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    let before = live.len();
    live.retain(|_, (_, at)| *at >= horizon);
    recovered.expired = (before - live.len()) as u64;
    Ok((live, recovered))
}

/// Writes the live keys to a new file and puts it in place of the journal: the file to append to.
fn rewrite(path: &Path, live: &Live) -> io::Result<File> {
    let fresh = path.with_extension("journal.new");
    {
        let mut out = io::BufWriter::new(File::create(&fresh)?);
        for (key, (fingerprint, at_ms)) in live {
            let record = Record {
                open: true,
                key: *key,
                fingerprint: *fingerprint,
                at_ms: *at_ms,
            };
            out.write_all(&record.encode())?;
        }
        // No fsync: the journal is for a crash of the process, not of the machine.
        out.flush()?;
    }
    fs::rename(&fresh, path)?;
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
