//! What of the ledger survives a restart (`--state-dir`): which request ids may have created a
//! user without the caller hearing of it, so that a restarted gateway still looks up their
//! retries' 409s (docs/design.md §7).
//!
//! One file of fixed-size records, `in-doubt.journal`: `open` (an attempt is about to be sent for
//! this key) and `close` (the key's calls ended knowing their outcome). A key whose last record is
//! `open` is in doubt. The file is mapped into the process, shared: a record is copied into the
//! kernel's page cache itself, so it outlives a crash or SIGKILL of the process the moment the
//! copy ends (not a crash of the machine: no fsync), and recording costs no system call. The file
//! is sized ahead, with room for four records per live key (and at least [`COMPACT_MIN`]), its
//! blocks reserved (`fallocate`, or zeros written where a file system cannot) before it is mapped:
//! a full disk is an error then, never a fault on a copy. When the room is used up, the live keys
//! alone (less the expired ones, and the oldest beyond the capacity) are written to a new file
//! that takes its place, so the file stays bounded like the memory. On start the file is read up
//! to the first damaged or torn record (or the zeros of unused room), what was read is kept, and
//! the file is rewritten the same way.
//!
//! Keys and fingerprints must come out the same in the process that reads the journal as in the
//! one that wrote it, yet no caller may predict them (a caller that could would pick ids whose keys
//! pile into one bucket of the ledger's maps). So the directory keeps a secret of its own,
//! `hash.key`: 16 random bytes drawn when a directory is first used, under which both are SipHash
//! ([`super::KeyedHasher`]), as in a gateway without `--state-dir`. A journal written by an earlier
//! version, whose keys are SHA-256 digests and which has no `hash.key`, gets its secret at once:
//! every key from then on is hashed under it, and the digests it holds are marked so (their
//! records say so too) and recognised for one TTL after the newest of them, never after.
//!
//! Knows files, keys and fingerprints; never HTTP, gRPC or emails.

use std::{
    collections::{HashMap, HashSet},
    fs::{self, File, OpenOptions},
    hash::BuildHasherDefault,
    io::{self, Read, Seek, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, mpsc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use memmap2::MmapMut;
use sha2::{Digest, Sha256};

use super::{DigestHasher, Fingerprint, Key, KeyedHasher};

/// The file's name inside `--state-dir`.
pub const FILE_NAME: &str = "in-doubt.journal";
/// The file a gateway holds an exclusive lock on while it uses `--state-dir`: one gateway per
/// directory, since two would rewrite and map the same journal under each other.
pub const LOCK_FILE_NAME: &str = "gateway.lock";
/// The name of the secret that keys and fingerprints are hashed under, inside `--state-dir`.
pub const KEY_FILE_NAME: &str = "hash.key";
/// Bytes of that secret.
const SECRET_LEN: usize = 16;
/// Bytes of one record: kind, key, fingerprint, time (ms since the epoch), checksum. The key and
/// the fingerprint each have 32 bytes: their 16, then zeros. (Earlier versions wrote whole 32-byte
/// digests there, whose first 16 bytes are the key and fingerprint now: their records read the
/// same.)
pub const RECORD_LEN: usize = 1 + 32 + 32 + 8 + 4;
/// The fewest records a file has room for.
const COMPACT_MIN: u64 = 4096;
/// Records of room a file gets per live key.
const ROOM_PER_KEY: u64 = 4;
/// The wait before the first new try of a rewrite that failed; it doubles with each failure, up
/// to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// The name of a file made ready for the next rewrite, inside `--state-dir`: this, a dot and a
/// number.
const SPARE_PREFIX: &str = "in-doubt.journal.spare";

const OPEN: u8 = 1;
const CLOSE: u8 = 2;
/// An open of a key that is a SHA-256 digest (an earlier version's), not hashed under the secret.
const OPEN_DIGEST: u8 = 3;

/// A record as it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    open: bool,
    /// The key is a digest ([`Key::digest`]), as an earlier version wrote it.
    digest: bool,
    key: Key,
    fingerprint: Fingerprint,
    at_ms: u64,
}

impl Record {
    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[0] = match (self.open, self.digest) {
            (true, false) => OPEN,
            (true, true) => OPEN_DIGEST,
            (false, _) => CLOSE,
        };
        out[1..17].copy_from_slice(&self.key.0);
        out[33..49].copy_from_slice(&self.fingerprint.0);
        out[65..73].copy_from_slice(&self.at_ms.to_le_bytes());
        let sum = checksum(&out[..73]);
        out[73..].copy_from_slice(&sum);
        out
    }

    /// `None` for a torn or damaged record.
    fn decode(bytes: &[u8; RECORD_LEN]) -> Option<Self> {
        let (body, sum) = bytes.split_at(73);
        if checksum(body) != sum && earlier_checksum(body) != sum {
            return None;
        }
        let (open, digest) = match bytes[0] {
            OPEN => (true, false),
            OPEN_DIGEST => (true, true),
            CLOSE => (false, false),
            _ => return None,
        };
        let mut key = [0u8; 16];
        key.copy_from_slice(&bytes[1..17]);
        let mut fingerprint = [0u8; 16];
        fingerprint.copy_from_slice(&bytes[33..49]);
        let mut at = [0u8; 8];
        at.copy_from_slice(&bytes[65..73]);
        Some(Self {
            open,
            digest,
            key: Key(key),
            fingerprint: Fingerprint(fingerprint),
            at_ms: u64::from_le_bytes(at),
        })
    }
}

/// A record's checksum: its CRC-32, which finds a torn or damaged record as well as any digest
/// and costs a fraction of one on every call.
fn checksum(bytes: &[u8]) -> [u8; 4] {
    crc32fast::hash(bytes).to_le_bytes()
}

/// The checksum of the records earlier versions wrote (the first four bytes of their SHA-256),
/// still read, so that a gateway upgraded over a journal keeps the request ids it left in doubt.
fn earlier_checksum(bytes: &[u8]) -> [u8; 4] {
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
    /// Records skipped because they were torn or damaged (the records after them are read);
    /// zeros (room never used) do not count.
    pub damaged: u64,
    /// Keys dropped because they were older than the TTL.
    pub expired: u64,
    /// Keys in doubt let go because `hash.key` could not be read: they were hashed under a secret
    /// that is lost, so no retry could find them.
    pub unkeyed: u64,
    /// Keys in doubt that are SHA-256 digests, as an earlier version wrote them: their retries are
    /// looked up by digest until `digests_until`.
    pub digests: u64,
    /// One TTL after the newest of those keys was opened: the end of the digests' window.
    pub digests_until: Option<SystemTime>,
}

/// Keys open now, with their fingerprint and when (ms since the epoch) they were opened.
type Live = HashMap<Key, (Fingerprint, u64), BuildHasherDefault<DigestHasher>>;
/// Keys that are SHA-256 digests, as an earlier version wrote them.
type Digests = HashSet<Key, BuildHasherDefault<DigestHasher>>;

#[derive(Debug)]
struct Inner {
    /// The file, mapped; `None` after a rewrite failed, until one succeeds.
    map: Option<MmapMut>,
    live: Live,
    /// Records in the file: the next one goes at this index.
    records: u64,
    /// The keys that are digests (an earlier version's), whose records say so.
    digests: Digests,
    /// A spare file was asked of the preparer for the next rewrite, and not yet used.
    asked: bool,
    /// After a rewrite failed: when the next may be tried, and the wait after that one.
    retry: Option<(std::time::Instant, Duration)>,
}

/// A file made ready for a rewrite ahead of it, off the calls' path: created, its room reserved
/// and mapped, so that the rewrite itself only copies the live keys in and renames it.
#[derive(Debug)]
struct Spare {
    path: PathBuf,
    map: MmapMut,
    /// Records of room.
    room: u64,
}

/// The thread that makes spare files, and where it leaves the last one made.
#[derive(Debug)]
struct Preparer {
    ask: Mutex<mpsc::Sender<u64>>,
    ready: Arc<Mutex<Option<Spare>>>,
}

impl Preparer {
    /// Starts the thread, which makes spares in `dir` as they are asked for (with the room asked
    /// for) and stops when the journal goes.
    fn start(dir: &Path) -> io::Result<Self> {
        let (ask, asked) = mpsc::channel::<u64>();
        let ready = Arc::new(Mutex::new(None));
        let (dir, made) = (dir.to_owned(), ready.clone());
        std::thread::Builder::new()
            .name("journal-spare".into())
            .spawn(move || {
                for (n, room) in asked.into_iter().enumerate() {
                    let path = dir.join(format!("{SPARE_PREFIX}.{n}"));
                    match prepare(&path, room) {
                        Ok(spare) => {
                            let old = made.lock().unwrap_or_else(PoisonError::into_inner).replace(spare);
                            if let Some(Spare { path, map, .. }) = old {
                                drop(map);
                                let _ = fs::remove_file(path);
                            }
                        }
                        Err(e) => {
                            let _ = fs::remove_file(&path);
                            tracing::warn!(error = %e, "cannot make the next file of the --state-dir journal ahead; the rewrite will make it");
                        }
                    }
                }
            })?;
        Ok(Self {
            ask: Mutex::new(ask),
            ready,
        })
    }

    fn ask(&self, room: u64) {
        let _ = self.ask.lock().unwrap_or_else(PoisonError::into_inner).send(room);
    }

    fn take(&self) -> Option<Spare> {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Makes a spare file at `path` with `room` records of room, reserved and mapped.
fn prepare(path: &Path, room: u64) -> io::Result<Spare> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    reserve(&file, room * RECORD_LEN as u64)?;
    let map = map(&file)?;
    Ok(Spare {
        path: path.to_owned(),
        map,
        room,
    })
}

/// The journal of one gateway process.
#[derive(Debug)]
pub struct Journal {
    /// Holds the directory's lock ([`LOCK_FILE_NAME`]) for as long as the journal lives.
    _lock: File,
    path: PathBuf,
    /// The directory's secret.
    secret: [u8; SECRET_LEN],
    /// The end of the window in which keys that are digests are still recognised.
    digests_until: Option<SystemTime>,
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
    preparer: Preparer,
    /// Runs (once) as a close begins, for tests that race another call against it.
    #[cfg(test)]
    before_close: Mutex<Option<BeforeClose>>,
}

/// What runs as a close begins, in tests.
#[cfg(test)]
struct BeforeClose(Box<dyn FnOnce(Key) + Send>);

#[cfg(test)]
impl std::fmt::Debug for BeforeClose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeClose(..)")
    }
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, keeping the keys opened within `ttl` and at most
    /// `capacity` of them (the newest).
    /// Fails if another gateway holds the directory, or if its files cannot be read or written.
    pub fn open(dir: &Path, ttl: Duration, capacity: usize) -> io::Result<(Self, Recovered)> {
        fs::create_dir_all(dir)?;
        let lock = lock(dir)?;
        let path = dir.join(FILE_NAME);
        let (live, mut recovered, mut digests) = read(&path, ttl)?;
        let mut live: Vec<_> = live.into_iter().collect();
        live.sort_by_key(|(_, (_, at))| *at);
        let excess = live.len().saturating_sub(capacity);
        recovered.expired += excess as u64;
        let mut live: Live = live.into_iter().skip(excess).collect();
        let secret = match read_secret(&dir.join(KEY_FILE_NAME))? {
            Secret::Kept(secret) => secret,
            // An earlier version's journal: its keys are digests. They are recognised for one TTL
            // after the newest of them; every key from now on is hashed under the secret.
            Secret::Missing => {
                digests.extend(live.keys());
                draw_secret(dir)?
            }
            Secret::Unreadable => {
                let before = live.len();
                live.retain(|key, _| digests.contains(key));
                recovered.unkeyed = (before - live.len()) as u64;
                draw_secret(dir)?
            }
        };
        digests.retain(|key| live.contains_key(key));
        let newest = digests
            .iter()
            .filter_map(|k| live.get(k))
            .map(|(_, at)| *at)
            .max();
        let digests_until = newest.map(|at| UNIX_EPOCH + Duration::from_millis(at) + ttl);
        recovered.digests = digests.len() as u64;
        recovered.digests_until = digests_until;
        remove_spares(dir);
        let map = rewrite(&path, &live, &digests)?;
        let mut in_doubt: Vec<_> = live.iter().map(|(k, (f, at))| (*at, *k, *f)).collect();
        in_doubt.sort_by_key(|(at, key, _)| (*at, key.0));
        recovered.in_doubt = in_doubt.into_iter().map(|(_, k, f)| (k, f)).collect();
        let records = live.len() as u64;
        let journal = Self {
            _lock: lock,
            path,
            secret,
            digests_until,
            ttl,
            capacity,
            inner: Mutex::new(Inner {
                map: Some(map),
                live,
                records,
                digests,
                asked: false,
                retry: None,
            }),
            preparer: Preparer::start(dir)?,
            #[cfg(test)]
            before_close: Mutex::new(None),
        };
        Ok((journal, recovered))
    }

    /// How the keys and fingerprints of this journal are computed: SipHash under the directory's
    /// secret.
    pub fn hashing(&self) -> KeyedHasher {
        KeyedHasher::with_secret(self.secret)
    }

    /// Until when keys that are SHA-256 digests ([`Key::digest`], [`Fingerprint::digest`]), which a
    /// journal of an earlier version holds, are recognised: one TTL after the newest of them was
    /// opened. `None`: it holds none.
    pub fn digests_until(&self) -> Option<SystemTime> {
        self.digests_until
    }

    /// Records that an attempt for `key` is about to be sent: in the kernel's hands when this
    /// returns.
    pub fn opened(&self, key: Key, fingerprint: Fingerprint) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let record = Record {
            open: true,
            digest: inner.digests.contains(&key),
            key,
            fingerprint,
            at_ms: now_ms(),
        };
        inner.live.insert(key, (fingerprint, record.at_ms));
        self.append(&mut inner, &record)
    }

    /// Records that `key`'s calls ended knowing their outcome.
    pub fn closed(&self, key: Key) -> io::Result<()> {
        #[cfg(test)]
        if let Some(hook) = self
            .before_close
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            (hook.0)(key);
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((fingerprint, _)) = inner.live.remove(&key) else {
            return Ok(());
        };
        let record = Record {
            open: false,
            digest: false,
            key,
            fingerprint,
            at_ms: now_ms(),
        };
        self.append(&mut inner, &record)
    }

    /// Copies `record` into the file, first rewriting the file if it has no room left (or a
    /// rewrite failed before). A rewrite writes the live keys, which already say what `record`
    /// says.
    fn append(&self, inner: &mut Inner, record: &Record) -> io::Result<()> {
        let at = inner.records as usize * RECORD_LEN;
        let room = match &mut inner.map {
            Some(map) if at + RECORD_LEN <= map.len() => {
                map[at..at + RECORD_LEN].copy_from_slice(&record.encode());
                inner.records += 1;
                (map.len() / RECORD_LEN) as u64
            }
            _ => return self.compact(inner),
        };
        // Three quarters of the room used: the next file is made now, off the calls' path.
        if !inner.asked && inner.records * 4 >= room * 3 {
            inner.asked = true;
            self.preparer.ask(room_for(inner.live.len()));
        }
        Ok(())
    }

    /// Lets go of the keys older than the TTL and the oldest beyond the capacity, and writes the
    /// rest to a new file in place of the old one.
    fn compact(&self, inner: &mut Inner) -> io::Result<()> {
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
        let now = std::time::Instant::now();
        if let Some((at, _)) = inner.retry
            && now < at
        {
            return Err(io::Error::other(
                "the journal's last rewrite failed; the next is tried after a wait",
            ));
        }
        inner.map = None;
        inner.asked = false;
        let spare = self
            .preparer
            .take()
            .filter(|s| s.room >= room_for(inner.live.len()));
        let rewritten = match spare {
            Some(spare) => put_spare(spare, &self.path, &inner.live, &inner.digests),
            None => rewrite(&self.path, &inner.live, &inner.digests),
        };
        match rewritten {
            Ok(map) => {
                inner.map = Some(map);
                inner.records = inner.live.len() as u64;
                inner.retry = None;
                Ok(())
            }
            Err(e) => {
                let wait = inner.retry.map_or(RETRY_FIRST, |(_, wait)| wait);
                inner.retry = Some((now + wait, (wait * 2).min(RETRY_MAX)));
                Err(e)
            }
        }
    }

    /// Keys open now.
    pub fn live(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .len()
    }

    /// Runs `hook` as the next close begins.
    #[cfg(test)]
    pub(super) fn before_close(&self, hook: Box<dyn FnOnce(Key) + Send>) {
        *self.before_close.lock().unwrap_or_else(PoisonError::into_inner) = Some(BeforeClose(hook));
    }

    /// Records in the file now.
    pub fn records(&self) -> u64 {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).records
    }
}

/// Takes the exclusive lock of `dir` ([`LOCK_FILE_NAME`]), without waiting: another process
/// holding it is an error that says so. The kernel lets go of it when the process ends, however.
fn lock(dir: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE_NAME))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("another gateway is using this directory ({LOCK_FILE_NAME} is locked)"),
        )),
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!("{LOCK_FILE_NAME}: {e}"),
        )),
    }
}

/// What `hash.key` held.
#[derive(Debug, PartialEq, Eq)]
enum Secret {
    Kept([u8; SECRET_LEN]),
    Missing,
    /// There, but not a secret: too short or too long, or not a plain file.
    Unreadable,
}

/// Reads `hash.key`. A file that is there but cannot be read (no permission, an I/O error) is an
/// error, never taken for a missing one: drawing a new secret would let go of every id in doubt.
fn read_secret(path: &Path) -> io::Result<Secret> {
    match fs::read(path) {
        Ok(bytes) => Ok(bytes.try_into().map_or(Secret::Unreadable, Secret::Kept)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Secret::Missing),
        Err(e) if e.kind() == io::ErrorKind::IsADirectory => Ok(Secret::Unreadable),
        Err(e) => Err(io::Error::new(e.kind(), format!("{KEY_FILE_NAME}: {e}"))),
    }
}

/// Draws a new secret and puts it in `dir`, whole or not at all: written to a file of its own,
/// flushed to the disk (once per directory, so a crash of the machine cannot leave an empty one
/// behind), and put in place by rename. Only this gateway may read it.
fn draw_secret(dir: &Path) -> io::Result<[u8; SECRET_LEN]> {
    put_secret(dir).map_err(|e| io::Error::new(e.kind(), format!("{KEY_FILE_NAME}: {e}")))
}

fn put_secret(dir: &Path) -> io::Result<[u8; SECRET_LEN]> {
    let secret: [u8; SECRET_LEN] = rand::random();
    let fresh = dir.join(KEY_FILE_NAME).with_extension("key.new");
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&fresh)?;
    file.write_all(&secret)?;
    file.sync_all()?;
    fs::rename(&fresh, dir.join(KEY_FILE_NAME))?;
    Ok(secret)
}

/// Reads the records, skipping those torn or damaged: the keys left open within `ttl`.
fn read(path: &Path, ttl: Duration) -> io::Result<(Live, Recovered, Digests)> {
    let mut recovered = Recovered::default();
    let mut live = Live::default();
    let mut digests = Digests::default();
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => {
            file.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((live, recovered, digests)),
        Err(e) => return Err(e),
    }
    for chunk in bytes.chunks(RECORD_LEN) {
        // Zeros are room never used; a record with anything in it counts whole (its own last
        // bytes may be zeros), and so does a piece of one cut short at the end of the file.
        if chunk.iter().all(|b| *b == 0) {
            continue;
        }
        let Some(record) = chunk.try_into().ok().and_then(Record::decode) else {
            recovered.damaged += 1;
            continue;
        };
        recovered.records += 1;
        if record.open {
            live.insert(record.key, (record.fingerprint, record.at_ms));
            if record.digest {
                digests.insert(record.key);
            }
        } else {
            live.remove(&record.key);
        }
    }
    let horizon = now_ms().saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    let before = live.len();
    live.retain(|_, (_, at)| *at >= horizon);
    recovered.expired = (before - live.len()) as u64;
    Ok((live, recovered, digests))
}

/// The room a file gets for `live` keys: [`ROOM_PER_KEY`] records per key, at least
/// [`COMPACT_MIN`].
fn room_for(live: usize) -> u64 {
    COMPACT_MIN.max(ROOM_PER_KEY * live as u64)
}

/// The records that open each live key (saying which are `digests`).
fn live_records(live: &Live, digests: &Digests) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(live.len() * RECORD_LEN);
    for (key, (fingerprint, at_ms)) in live {
        let record = Record {
            open: true,
            digest: digests.contains(key),
            key: *key,
            fingerprint: *fingerprint,
            at_ms: *at_ms,
        };
        bytes.extend_from_slice(&record.encode());
    }
    bytes
}

/// Copies the live keys into a spare made ahead (its room reads as zeros) and puts it in place
/// of the journal: a copy and a rename, no file to make or reserve.
fn put_spare(mut spare: Spare, path: &Path, live: &Live, digests: &Digests) -> io::Result<MmapMut> {
    let bytes = live_records(live, digests);
    spare.map[..bytes.len()].copy_from_slice(&bytes);
    fs::rename(&spare.path, path)?;
    Ok(spare.map)
}

/// Removes the spare files a gateway before this one left.
fn remove_spares(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(SPARE_PREFIX) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Writes the live keys to a new file, with room for [`ROOM_PER_KEY`] records per key (and at
/// least [`COMPACT_MIN`]) that reads as zeros, puts it in place of the journal and maps it.
fn rewrite(path: &Path, live: &Live, digests: &Digests) -> io::Result<MmapMut> {
    let room = room_for(live.len()) as usize;
    let bytes = live_records(live, digests);
    let fresh = path.with_extension("journal.new");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&fresh)?;
    // No fsync: the journal is for a crash of the process, not of the machine.
    file.write_all(&bytes)?;
    reserve(&file, (room * RECORD_LEN) as u64)?;
    fs::rename(&fresh, path)?;
    map(&file)
}

/// Maps `file`, its pages made at once.
fn map(file: &File) -> io::Result<MmapMut> {
    // SAFETY: the file is this gateway's own, in its `--state-dir` (one gateway per directory, by
    // its lock), and nothing truncates it while it is mapped: a rewrite puts a new file in its
    // place by rename, a spare is made under a name of its own, and each mapping is dropped before
    // its file is removed. Its blocks are reserved, so a copy into the mapping cannot fault for
    // want of disk space.
    let map = unsafe { MmapMut::map_mut(file) }?;
    // The pages made now, in one call, rather than by a fault each as records reach them. Only a
    // hint: a kernel before Linux 5.14 refuses it, and the faults make them then.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::PopulateWrite);
    Ok(map)
}

/// Makes `file` `len` bytes long, its blocks on the disk already: a copy into its mapping then
/// never faults for want of space (a full disk is an error here instead). Where the file system
/// can reserve blocks (`fallocate`), they are reserved without being written; elsewhere the rest
/// of the file is written with zeros.
fn reserve(file: &File, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => return Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {}
        Err(e) => return Err(e.into()),
    }
    write_zeros(file, len)
}

/// Writes zeros from the end of `file` up to `len` bytes.
fn write_zeros(mut file: &File, len: u64) -> io::Result<()> {
    static CHUNK: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = file.metadata()?.len();
    file.seek(io::SeekFrom::Start(at))?;
    while at < len {
        let n = CHUNK.len().min((len - at) as usize);
        file.write_all(&CHUNK[..n])?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
