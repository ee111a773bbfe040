//! The journal on a real directory: what a restart reads back, and what damage costs.

use super::*;

fn key(n: u128) -> Key {
    Key::new("acct", uuid::Uuid::from_u128(n))
}

fn fp(n: u8) -> Fingerprint {
    Fingerprint([n; 32])
}

const TTL: Duration = Duration::from_secs(900);

fn dir() -> tempdir::Dir {
    tempdir::Dir::new()
}

/// A fresh directory under the system's temporary one, removed on drop.
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(format!("chime-journal-{}", uuid::Uuid::new_v4()));
            Self(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn keys_left_open_are_in_doubt_after_a_restart_and_closed_ones_are_not() {
    let d = dir();
    {
        let (journal, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
        assert_eq!(recovered, Recovered::default());
        journal.opened(key(1), fp(1)).unwrap();
        journal.opened(key(2), fp(2)).unwrap();
        journal.opened(key(3), fp(3)).unwrap();
        journal.closed(key(2)).unwrap();
        // Closing a key never opened writes nothing.
        journal.closed(key(9)).unwrap();
        assert_eq!(journal.live(), 2);
        // The close waits for the next open, or for the journal to be dropped.
        assert_eq!(journal.records(), 3);
    }
    let (journal, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    let mut in_doubt = recovered.in_doubt.clone();
    in_doubt.sort_by_key(|(_, f)| f.0);
    assert_eq!(in_doubt, vec![(key(1), fp(1)), (key(3), fp(3))]);
    assert_eq!(recovered.records, 4);
    assert_eq!(recovered.damaged_bytes, 0);
    // Reading rewrote the file with the live keys alone.
    assert_eq!(journal.records(), 2);
    let len = std::fs::metadata(d.0.join(FILE_NAME)).unwrap().len();
    assert_eq!(len, 2 * RECORD_LEN as u64);
}

#[test]
fn a_torn_last_record_is_read_up_to_the_damage() {
    let d = dir();
    {
        let (journal, _) = Journal::open(&d.0, TTL, 100).unwrap();
        journal.opened(key(1), fp(1)).unwrap();
        journal.opened(key(2), fp(2)).unwrap();
    }
    let path = d.0.join(FILE_NAME);
    let bytes = std::fs::read(&path).unwrap();
    // A write cut short by a kill: half a record at the end.
    std::fs::write(&path, &bytes[..RECORD_LEN + RECORD_LEN / 2]).unwrap();
    let (journal, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert_eq!(recovered.in_doubt, vec![(key(1), fp(1))]);
    assert_eq!(recovered.damaged_bytes, RECORD_LEN as u64 / 2);
    // Appends go after sound records only.
    journal.opened(key(3), fp(3)).unwrap();
    drop(journal);
    let (_, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert_eq!(recovered.in_doubt.len(), 2);
    assert_eq!(recovered.damaged_bytes, 0);
}

#[test]
fn a_damaged_record_stops_the_reading_there_and_never_the_start() {
    let d = dir();
    {
        let (journal, _) = Journal::open(&d.0, TTL, 100).unwrap();
        for n in 1..=3 {
            journal.opened(key(n), fp(n as u8)).unwrap();
        }
    }
    let path = d.0.join(FILE_NAME);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[RECORD_LEN + 40] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let (_, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert_eq!(recovered.in_doubt, vec![(key(1), fp(1))]);
    assert_eq!(recovered.damaged_bytes, 2 * RECORD_LEN as u64);
    // Garbage from the first byte: nothing read, and the gateway starts.
    std::fs::write(&path, b"not a journal at all, not even one record long").unwrap();
    let (journal, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert!(recovered.in_doubt.is_empty());
    assert_eq!(journal.records(), 0);
}

#[test]
fn keys_older_than_the_ttl_are_not_read_back() {
    let d = dir();
    let path = d.0.join(FILE_NAME);
    std::fs::create_dir_all(&d.0).unwrap();
    let old = Record {
        open: true,
        key: key(1),
        fingerprint: fp(1),
        at_ms: now_ms() - 901_000,
    };
    let fresh = Record {
        open: true,
        key: key(2),
        fingerprint: fp(2),
        at_ms: now_ms() - 5_000,
    };
    let mut bytes = old.encode().to_vec();
    bytes.extend_from_slice(&fresh.encode());
    std::fs::write(&path, bytes).unwrap();
    let (_, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert_eq!(recovered.in_doubt, vec![(key(2), fp(2))]);
    assert_eq!(recovered.expired, 1);
}

#[test]
fn the_file_stays_bounded_by_compaction_and_the_capacity() {
    let d = dir();
    let (journal, _) = Journal::open(&d.0, TTL, 50).unwrap();
    for n in 0..20_000u128 {
        journal.opened(key(n), fp(1)).unwrap();
        if n % 100 != 0 {
            journal.closed(key(n)).unwrap();
        }
    }
    // 200 keys stayed open; each compaction keeps the newest 50.
    let len = std::fs::metadata(d.0.join(FILE_NAME)).unwrap().len();
    assert!(len <= (COMPACT_MIN + 1) * RECORD_LEN as u64, "{len}");
    drop(journal);
    let (_, recovered) = Journal::open(&d.0, TTL, 50).unwrap();
    assert_eq!(recovered.in_doubt.len(), 50);
    assert!(recovered.in_doubt.contains(&(key(19_900), fp(1))));
    assert!(!recovered.in_doubt.contains(&(key(0), fp(1))));
}

#[test]
fn an_unusable_directory_is_an_error() {
    let d = dir();
    std::fs::write(&d.0, b"a file, not a directory").unwrap();
    assert!(Journal::open(&d.0, TTL, 10).is_err());
    let _ = std::fs::remove_file(&d.0);
}

#[test]
fn a_close_goes_out_with_the_next_open_and_a_kill_before_it_only_leaves_doubt() {
    let d = dir();
    let path = d.0.join(FILE_NAME);
    let len = || std::fs::metadata(&path).unwrap().len();
    let (journal, _) = Journal::open(&d.0, TTL, 100).unwrap();
    journal.opened(key(1), fp(1)).unwrap();
    journal.closed(key(1)).unwrap();
    assert_eq!(len(), RECORD_LEN as u64, "the close waits");
    journal.opened(key(2), fp(2)).unwrap();
    assert_eq!(
        len(),
        3 * RECORD_LEN as u64,
        "one write: the close, then the open"
    );
    journal.closed(key(2)).unwrap();
    // Killed before another open: the waiting close is lost, and key 2 reads back in doubt.
    std::mem::forget(journal);
    let (journal, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert_eq!(recovered.in_doubt, vec![(key(2), fp(2))]);
    // Enough closes are written without waiting for an open.
    for n in 10..10 + PENDING_MAX as u128 {
        journal.opened(key(n), fp(3)).unwrap();
    }
    let before = len();
    for n in 10..9 + PENDING_MAX as u128 {
        journal.closed(key(n)).unwrap();
    }
    assert_eq!(len(), before, "all but one wait");
    journal.closed(key(9 + PENDING_MAX as u128)).unwrap();
    assert_eq!(len(), before + (PENDING_MAX * RECORD_LEN) as u64);
    journal.closed(key(2)).unwrap();
    // Dropped in good order: the waiting close is written.
    drop(journal);
    let (_, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert!(recovered.in_doubt.is_empty(), "{:?}", recovered.in_doubt);
}

#[test]
fn after_a_failed_write_the_file_is_rewritten_whole() {
    let d = dir();
    let (journal, _) = Journal::open(&d.0, TTL, 100).unwrap();
    journal.opened(key(1), fp(1)).unwrap();
    // The disk is full: the write fails (perhaps halfway).
    journal.inner.lock().unwrap().file = OpenOptions::new().write(true).open("/dev/full").unwrap();
    assert!(journal.opened(key(2), fp(2)).is_err());
    // The next open puts a whole file in place, with every live key.
    journal.opened(key(3), fp(3)).unwrap();
    assert_eq!(journal.records(), 3);
    std::mem::forget(journal);
    let (_, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    let mut in_doubt = recovered.in_doubt;
    in_doubt.sort_by_key(|(_, f)| f.0);
    assert_eq!(in_doubt, vec![(key(1), fp(1)), (key(2), fp(2)), (key(3), fp(3))]);
    assert_eq!(recovered.damaged_bytes, 0);
}

/// Opens `key(first)`, then for each of `steps` closes the key before and opens the next: each
/// open's write carries the close before it.
fn churn(journal: &Journal, first: u128, steps: u128) {
    journal.opened(key(first), fp(9)).unwrap();
    for n in first..first + steps {
        journal.closed(key(n)).unwrap();
        journal.opened(key(n + 1), fp(9)).unwrap();
    }
}

// Kills the mutants of the compaction threshold: the file is rewritten the moment it holds
// COMPACT_MIN records (with few keys live), and not before four records per live key.
#[test]
fn compaction_starts_at_its_threshold_exactly() {
    let d = dir();
    let (journal, _) = Journal::open(&d.0, TTL, 10_000).unwrap();
    journal.opened(key(0), fp(1)).unwrap();
    // 1 + 1 records, then 2 per step: 4096 after 2047 steps.
    churn(&journal, 1_000_000, 2046);
    assert_eq!(journal.records(), COMPACT_MIN - 2);
    churn_once(&journal, 1_000_000 + 2047);
    assert_eq!(journal.records(), 2, "rewritten with the two live keys");

    let d = dir();
    let (journal, _) = Journal::open(&d.0, TTL, 10_000).unwrap();
    for n in 0..2000 {
        journal.opened(key(n), fp(1)).unwrap();
    }
    // 2,001 live keys: not rewritten until 8,004 records.
    churn(&journal, 1_000_000, 2500);
    assert_eq!(journal.records(), 2001 + 2 * 2500);
}

fn churn_once(journal: &Journal, n: u128) {
    journal.closed(key(n - 1)).unwrap();
    journal.opened(key(n), fp(9)).unwrap();
}

// Kills the mutants of the capacity at compaction: the oldest keys beyond it are let go.
#[test]
fn compaction_keeps_the_newest_keys_up_to_the_capacity() {
    let d = dir();
    let (journal, _) = Journal::open(&d.0, TTL, 3).unwrap();
    for n in 0..10 {
        journal.opened(key(n), fp(1)).unwrap();
    }
    churn(&journal, 1_000_000, 2100);
    assert!(journal.live() <= 4, "{}", journal.live());
}

#[test]
fn a_journal_that_cannot_be_read_is_an_error() {
    let d = dir();
    std::fs::create_dir_all(&d.0).unwrap();
    // A link to itself: opening it fails with something other than "not found".
    std::os::unix::fs::symlink(FILE_NAME, d.0.join(FILE_NAME)).unwrap();
    assert!(Journal::open(&d.0, TTL, 10).is_err());
}
