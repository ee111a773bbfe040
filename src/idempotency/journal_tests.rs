//! The journal on a real directory: what a restart reads back, and what damage costs.

use super::*;

fn key(n: u128) -> Key {
    Key::digest("acct", uuid::Uuid::from_u128(n))
}

fn fp(n: u8) -> Fingerprint {
    Fingerprint([n; 16])
}

const TTL: Duration = Duration::from_secs(900);

fn dir() -> tempdir::Dir {
    tempdir::Dir::new()
}

/// A directory whose journal has keys 1 and 2 left open, as a killed gateway leaves it.
fn two_left_open() -> tempdir::Dir {
    let d = dir();
    let (journal, _) = Journal::open(&d.0, TTL, 100).unwrap();
    journal.opened(key(1), fp(1)).unwrap();
    journal.opened(key(2), fp(2)).unwrap();
    d
}

/// Ends `journal` as a killed process does: nothing of it runs, and the kernel lets go of its lock.
fn kill(journal: Journal) {
    rustix::fs::flock(&journal._lock, rustix::fs::FlockOperation::Unlock).unwrap();
    std::mem::forget(journal);
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
        assert_eq!(journal.records(), 4);
    }
    let (journal, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    let mut in_doubt = recovered.in_doubt.clone();
    in_doubt.sort_by_key(|(_, f)| f.0);
    assert_eq!(in_doubt, vec![(key(1), fp(1)), (key(3), fp(3))]);
    assert_eq!(recovered.records, 4);
    assert_eq!(recovered.damaged, 0);
    // Reading rewrote the file with the live keys alone, and zeros for room.
    assert_eq!(journal.records(), 2);
    let bytes = std::fs::read(d.0.join(FILE_NAME)).unwrap();
    assert_eq!(bytes.len(), COMPACT_MIN as usize * RECORD_LEN);
    assert!(bytes[2 * RECORD_LEN..].iter().all(|b| *b == 0));
}

#[test]
fn a_torn_last_record_is_skipped_and_counted() {
    let d = two_left_open();
    let path = d.0.join(FILE_NAME);
    let mut bytes = std::fs::read(&path).unwrap();
    // A copy cut short by a kill: half a record, then the zeros of the room.
    bytes[RECORD_LEN + RECORD_LEN / 2..2 * RECORD_LEN].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let (_, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert_eq!(recovered.in_doubt, vec![(key(1), fp(1))]);
    assert_eq!(recovered.damaged, 1);
    // Cut after its first byte: the record still counts whole.
    bytes[RECORD_LEN + 1..2 * RECORD_LEN].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let (_, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert_eq!(recovered.damaged, 1);
    // A file cut short within a record: what is there is counted.
    std::fs::write(&path, &bytes[..RECORD_LEN + RECORD_LEN / 2]).unwrap();
    let (_, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert_eq!(recovered.damaged, 1);
    let (journal, _) = Journal::open(&d.0, TTL, 100).unwrap();
    // Appends go after sound records only.
    journal.opened(key(3), fp(3)).unwrap();
    drop(journal);
    let (_, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert_eq!(recovered.in_doubt.len(), 2);
    assert_eq!(recovered.damaged, 0);
}

#[test]
fn records_of_earlier_versions_are_read_and_rewritten_as_current_ones() {
    let d = dir();
    std::fs::create_dir_all(&d.0).unwrap();
    // As earlier versions wrote it: whole 32-byte digests of the key and the fingerprint, and as
    // checksum the first four bytes of the SHA-256 of the rest.
    let record = |n: u128| {
        let mut digest = Sha256::new();
        super::super::field(&mut digest, Some(b"acct"));
        digest.update(uuid::Uuid::from_u128(n).as_bytes());
        let key: [u8; 32] = digest.finalize().into();
        let mut bytes = [0u8; RECORD_LEN];
        bytes[0] = OPEN;
        bytes[1..33].copy_from_slice(&key);
        bytes[33..49].fill(n as u8);
        bytes[49..65].fill(0xee);
        bytes[65..73].copy_from_slice(&now_ms().to_le_bytes());
        let sum = Sha256::digest(&bytes[..73]);
        bytes[73..].copy_from_slice(&sum[..4]);
        assert_ne!(sum[..4], checksum(&bytes[..73]), "the two checksums differ");
        bytes
    };
    let path = d.0.join(FILE_NAME);
    std::fs::write(&path, [record(1), record(2)].concat()).unwrap();
    let (journal, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert!(
        journal.digests_until().is_some(),
        "its keys are digests, recognised for a while"
    );
    let mut in_doubt = recovered.in_doubt.clone();
    in_doubt.sort_by_key(|(_, f)| f.0);
    // The keys the current version computes for the same ids.
    assert_eq!(in_doubt, vec![(key(1), fp(1)), (key(2), fp(2))]);
    assert_eq!(recovered.damaged, 0);
    // Rewritten as it was read: as the current version writes it.
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes[73..RECORD_LEN], checksum(&bytes[..73]));
    assert!(bytes[17..33].iter().chain(&bytes[49..65]).all(|b| *b == 0));
    assert_eq!(bytes[0], OPEN_DIGEST, "and said to be digests");
}

#[test]
fn a_damaged_record_is_skipped_and_the_records_after_it_are_kept() {
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
    let mut in_doubt = recovered.in_doubt.clone();
    in_doubt.sort_by_key(|(_, f)| f.0);
    assert_eq!(in_doubt, vec![(key(1), fp(1)), (key(3), fp(3))]);
    assert_eq!((recovered.records, recovered.damaged), (2, 1));
    // Damage in every other record: every sound one is read.
    {
        let (journal, _) = Journal::open(&d.0, TTL, 100).unwrap();
        for n in 4..=9 {
            journal.opened(key(n), fp(n as u8)).unwrap();
        }
    }
    let mut bytes = std::fs::read(&path).unwrap();
    // The reopening rewrote the live records in an order of its own: each record's fingerprint
    // (its first byte at offset 33) says which key a place holds.
    let mut sound = Vec::new();
    for n in 0..8 {
        if n % 2 == 0 {
            bytes[n * RECORD_LEN] = 0x7f;
        } else {
            sound.push(bytes[n * RECORD_LEN + 33]);
        }
    }
    std::fs::write(&path, &bytes).unwrap();
    let (_, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert_eq!((recovered.records, recovered.damaged), (4, 4));
    let mut kept: Vec<_> = recovered.in_doubt.iter().map(|(_, f)| f.0[0]).collect();
    kept.sort_unstable();
    sound.sort_unstable();
    assert_eq!(kept, sound);
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
        digest: false,
        key: key(1),
        fingerprint: fp(1),
        at_ms: now_ms() - 901_000,
    };
    let fresh = Record {
        open: true,
        digest: false,
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
fn every_record_is_in_the_file_when_the_call_returns() {
    let d = dir();
    let path = d.0.join(FILE_NAME);
    let (journal, _) = Journal::open(&d.0, TTL, 100).unwrap();
    journal.opened(key(1), fp(1)).unwrap();
    journal.closed(key(1)).unwrap();
    journal.opened(key(2), fp(2)).unwrap();
    // Read back by another reader while the journal is open: the page cache holds the copies.
    let bytes = std::fs::read(&path).unwrap();
    let records: Vec<_> = bytes
        .chunks_exact(RECORD_LEN)
        .map_while(|c| Record::decode(c.try_into().unwrap()))
        .map(|r| (r.open, r.key))
        .collect();
    assert_eq!(records, vec![(true, key(1)), (false, key(1)), (true, key(2))]);
    // Killed (nothing runs on the way out): key 2 alone reads back in doubt.
    kill(journal);
    let (journal, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert_eq!(recovered.in_doubt, vec![(key(2), fp(2))]);
    journal.closed(key(2)).unwrap();
    kill(journal);
    let (_, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert!(recovered.in_doubt.is_empty(), "{:?}", recovered.in_doubt);
}

#[test]
fn after_a_failed_rewrite_the_next_record_retries_it() {
    let d = dir();
    let (journal, _) = Journal::open(&d.0, TTL, 100).unwrap();
    journal.opened(key(1), fp(1)).unwrap();
    // No new file can be made (as on a full disk), neither ahead nor at the rewrite: the rewrite
    // when the room is used fails.
    let blockers = [
        d.0.join(FILE_NAME).with_extension("journal.new"),
        d.0.join(format!("{SPARE_PREFIX}.0")),
    ];
    for blocker in &blockers {
        std::fs::create_dir(blocker).unwrap();
    }
    let steps = u128::from(COMPACT_MIN - 2) / 2;
    churn(&journal, 1_000, steps);
    assert_eq!(journal.records(), COMPACT_MIN);
    assert!(journal.opened(key(2), fp(2)).is_err());
    for blocker in &blockers {
        std::fs::remove_dir(blocker).unwrap();
    }
    // Within the wait after a failure, records are refused at once: no rewrite is tried.
    assert!(journal.closed(key(1_000 + steps)).is_err());
    std::thread::sleep(RETRY_FIRST + Duration::from_millis(50));
    // The next record after it puts a whole file in place, with every live key.
    journal.opened(key(3), fp(3)).unwrap();
    assert_eq!(journal.records(), 3);
    kill(journal);
    let (_, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    let mut in_doubt = recovered.in_doubt;
    in_doubt.sort_by_key(|(_, f)| f.0);
    assert_eq!(in_doubt, vec![(key(1), fp(1)), (key(2), fp(2)), (key(3), fp(3))]);
    assert_eq!(recovered.damaged, 0);
}

#[test]
fn a_failed_rewrite_is_tried_again_after_a_wait_that_doubles() {
    let d = dir();
    let (journal, _) = Journal::open(&d.0, TTL, 100).unwrap();
    let blockers = [
        d.0.join(FILE_NAME).with_extension("journal.new"),
        d.0.join(format!("{SPARE_PREFIX}.0")),
    ];
    for blocker in &blockers {
        std::fs::create_dir(blocker).unwrap();
    }
    journal.opened(key(1), fp(1)).unwrap();
    churn(&journal, 1_000, u128::from(COMPACT_MIN - 2) / 2);
    let tried = |journal: &Journal| journal.inner.lock().unwrap().retry.map(|(_, wait)| wait);
    assert!(journal.opened(key(2), fp(2)).is_err());
    assert_eq!(tried(&journal), Some(RETRY_FIRST * 2), "failed once");
    assert!(journal.opened(key(3), fp(3)).is_err());
    assert_eq!(
        tried(&journal),
        Some(RETRY_FIRST * 2),
        "refused within the wait, not tried"
    );
    std::thread::sleep(RETRY_FIRST + Duration::from_millis(20));
    assert!(journal.opened(key(4), fp(4)).is_err());
    assert_eq!(
        tried(&journal),
        Some(RETRY_FIRST * 4),
        "tried after the wait, failed again"
    );
    for blocker in &blockers {
        std::fs::remove_dir(blocker).unwrap();
    }
    std::thread::sleep(RETRY_FIRST * 2 + Duration::from_millis(20));
    journal.opened(key(5), fp(5)).unwrap();
    assert_eq!(tried(&journal), None);
    assert_eq!(
        journal.live(),
        6,
        "no key was lost while the file could not be written"
    );
}

#[test]
fn the_rewrite_puts_in_place_the_file_made_ahead_of_it() {
    use std::os::unix::fs::MetadataExt;
    let d = dir();
    let (journal, _) = Journal::open(&d.0, TTL, 100).unwrap();
    // Three quarters of the room used: the next file is asked for.
    churn(&journal, 1_000, u128::from(COMPACT_MIN * 3 / 4) / 2);
    let spare = d.0.join(format!("{SPARE_PREFIX}.0"));
    let started = std::time::Instant::now();
    while journal.preparer.ready.lock().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(10), "no spare made");
        std::thread::sleep(Duration::from_millis(5));
    }
    let made = std::fs::metadata(&spare).unwrap();
    assert_eq!(made.len(), COMPACT_MIN * RECORD_LEN as u64);
    churn(&journal, 100_000, 512);
    assert!(journal.records() < 10, "rewritten: {}", journal.records());
    let journal_file = std::fs::metadata(d.0.join(FILE_NAME)).unwrap();
    assert_eq!(journal_file.ino(), made.ino(), "the spare is the journal now");
    assert!(!spare.exists());
    kill(journal);
    let (_, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    let mut open: Vec<_> = recovered.in_doubt.iter().map(|(k, _)| *k).collect();
    open.sort_by_key(|k| k.0);
    let mut expected = vec![
        key(1_000 + u128::from(COMPACT_MIN * 3 / 4) / 2),
        key(100_000 + 512),
    ];
    expected.sort_by_key(|k| k.0);
    assert_eq!(open, expected, "the last key of each churn is open");
    assert_eq!(recovered.damaged, 0);
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

// Kills the mutants of the room: the file is rewritten when a record finds it full, not
// before, and a rewrite leaves room for four records per live key.
#[test]
fn the_file_is_rewritten_when_its_room_is_used_and_not_before() {
    let d = dir();
    let len = || std::fs::metadata(d.0.join(FILE_NAME)).unwrap().len();
    let (journal, _) = Journal::open(&d.0, TTL, 10_000).unwrap();
    journal.opened(key(0), fp(1)).unwrap();
    // 1 + 1 records, then 2 per step: the room (COMPACT_MIN) is full after 2047 steps.
    churn(&journal, 1_000_000, 2047);
    assert_eq!(journal.records(), COMPACT_MIN);
    journal.closed(key(1_000_000 + 2047)).unwrap();
    assert_eq!(journal.records(), 1, "rewritten with the one live key");
    assert_eq!(len(), COMPACT_MIN * RECORD_LEN as u64);

    // 2,000 keys open, then churn: the rewrite keeps 2,001 and makes room for 8,004.
    for n in 1..2000 {
        journal.opened(key(n), fp(1)).unwrap();
    }
    // 2000 records: 1,048 steps reach 4,097, the first that finds the room full.
    churn(&journal, 2_000_000, 1048);
    assert_eq!(journal.records(), 2001, "rewritten with the 2,001 live keys");
    assert_eq!(len(), 8004 * RECORD_LEN as u64);
    // 2001 + 1 + 2 per step: full at 8,004 after 3,001 steps, rewritten at the next record.
    churn(&journal, 3_000_000, 3001);
    assert_eq!(journal.records(), 8004);
    journal.closed(key(3_000_000 + 3001)).unwrap();
    assert_eq!(
        journal.records(),
        2001,
        "rewritten: the churn closed what it opened"
    );
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

#[test]
fn zeros_fill_a_file_up_to_its_room_where_blocks_cannot_be_reserved() {
    let d = dir();
    std::fs::create_dir_all(&d.0).unwrap();
    let path = d.0.join("zeros");
    std::fs::write(&path, b"records").unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    write_zeros(&file, 200_000).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 200_000);
    assert_eq!(&bytes[..7], b"records");
    assert!(bytes[7..].iter().all(|b| *b == 0));
}

/// The keys a journal's hashing gives for a few ids, to compare two hashings by.
fn keys_under(journal: &Journal) -> Option<Vec<Key>> {
    let local = journal.hashing();
    Some(
        (0..3)
            .map(|n| Key::keyed("acct", uuid::Uuid::from_u128(n), &local))
            .collect(),
    )
}

#[test]
fn a_directory_keeps_the_secret_its_keys_are_hashed_under() {
    let d = dir();
    let (journal, _) = Journal::open(&d.0, TTL, 100).unwrap();
    let first = keys_under(&journal).expect("a new directory's keys are keyed");
    let secret = d.0.join(KEY_FILE_NAME);
    assert_eq!(std::fs::read(&secret).unwrap().len(), SECRET_LEN);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "only the gateway reads its secret: {mode:o}");
    }
    assert!(!d.0.join(KEY_FILE_NAME).with_extension("key.new").exists());
    drop(journal);
    // A restart hashes the same ids to the same keys: that is what finds the markers.
    let (journal, _) = Journal::open(&d.0, TTL, 100).unwrap();
    assert_eq!(keys_under(&journal), Some(first.clone()));
    // Another directory, another secret; and neither is the digest every process computes.
    let other = dir();
    let (journal, _) = Journal::open(&other.0, TTL, 100).unwrap();
    let second = keys_under(&journal).unwrap();
    assert_ne!(first, second);
    assert!(!first.contains(&key(0)) && !second.contains(&key(0)));
}

#[test]
fn a_journal_of_digests_gets_a_secret_at_once_and_recognises_its_digests_for_one_ttl() {
    let d = two_left_open();
    // As an earlier version leaves a directory: the journal, and no secret.
    std::fs::remove_file(d.0.join(KEY_FILE_NAME)).unwrap();
    let (journal, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert_eq!(recovered.in_doubt.len(), 2);
    assert_eq!(recovered.digests, 2);
    assert!(
        d.0.join(KEY_FILE_NAME).exists(),
        "a secret for every key from now on"
    );
    let until = journal.digests_until().expect("a window for the digests");
    let window = until.duration_since(SystemTime::now()).unwrap();
    assert!(
        window <= TTL && window > TTL - Duration::from_secs(60),
        "{window:?}"
    );
    assert_eq!(recovered.digests_until, Some(until));
    // A new key is keyed; a retry of a digest's id opens the digest again, still said to be one.
    journal.opened(key(9), fp(9)).unwrap();
    journal.closed(key(1)).unwrap();
    journal.opened(key(1), fp(1)).unwrap();
    drop(journal);
    let (journal, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert_eq!(recovered.in_doubt.len(), 3);
    assert_eq!(recovered.digests, 2, "the restart knows which keys are digests");
    assert!(journal.digests_until().is_some());
    journal.closed(key(1)).unwrap();
    journal.closed(key(2)).unwrap();
    drop(journal);
    // No digest in doubt: no window.
    let (journal, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert_eq!((recovered.in_doubt.len(), recovered.digests), (1, 0));
    assert!(journal.digests_until().is_none());
}

#[test]
fn digests_older_than_the_ttl_end_their_window() {
    let d = dir();
    std::fs::create_dir_all(&d.0).unwrap();
    let record = |n: u128, age_ms: u64| Record {
        open: true,
        digest: true,
        key: key(n),
        fingerprint: fp(n as u8),
        at_ms: now_ms() - age_ms,
    };
    let old = record(1, TTL.as_millis() as u64 + 1_000);
    let newer = record(2, 60_000);
    std::fs::write(d.0.join(FILE_NAME), [old.encode(), newer.encode()].concat()).unwrap();
    let (journal, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert_eq!(recovered.in_doubt, vec![(key(2), fp(2))]);
    let until = journal.digests_until().unwrap();
    let expected = UNIX_EPOCH + Duration::from_millis(newer.at_ms) + TTL;
    assert_eq!(until, expected, "one TTL after the newest digest");
}

#[test]
fn an_unreadable_secret_lets_go_of_the_keys_under_it_and_never_stops_the_start() {
    for damage in [&b"short"[..], &[7u8; SECRET_LEN + 1][..]] {
        let d = two_left_open();
        std::fs::write(d.0.join(KEY_FILE_NAME), damage).unwrap();
        let (journal, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
        assert_eq!(recovered.unkeyed, 2);
        assert!(recovered.in_doubt.is_empty());
        assert_eq!(journal.records(), 0);
        assert_eq!(std::fs::read(d.0.join(KEY_FILE_NAME)).unwrap().len(), SECRET_LEN);
        drop(journal);
        let (_, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
        assert_eq!(recovered, Recovered::default());
    }
    // Not a file at all: the same, once it can be replaced.
    let d = dir();
    std::fs::create_dir_all(d.0.join(KEY_FILE_NAME)).unwrap();
    assert_eq!(read_secret(&d.0.join(KEY_FILE_NAME)).unwrap(), Secret::Unreadable);
    // A directory cannot be replaced by a file: the start is refused, naming the file.
    let error = Journal::open(&d.0, TTL, 100).unwrap_err();
    assert!(error.to_string().starts_with("hash.key: "), "{error}");
}

#[test]
fn a_secret_that_cannot_be_read_stops_the_start_and_is_never_replaced() {
    let d = two_left_open();
    let secret = d.0.join(KEY_FILE_NAME);
    let kept = std::fs::read(&secret).unwrap();
    // No permission to read it: root reads any file, so a name that cannot be opened stands in
    // (a path through a file, which the kernel answers with ENOTDIR, not ENOENT).
    let error = read_secret(&secret.join("inside")).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::NotADirectory);
    assert!(error.to_string().starts_with("hash.key: "), "{error}");
    // Through open: an error, and the secret and the ids under it are still there.
    let mut permissions = std::fs::metadata(&secret).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o000);
    std::fs::set_permissions(&secret, permissions.clone()).unwrap();
    let unreadable = std::fs::read(&secret).is_err();
    if unreadable {
        let error = Journal::open(&d.0, TTL, 100).unwrap_err();
        assert!(error.to_string().starts_with("hash.key: "), "{error}");
    }
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o600);
    std::fs::set_permissions(&secret, permissions).unwrap();
    assert_eq!(std::fs::read(&secret).unwrap(), kept);
    let (_, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert_eq!(recovered.in_doubt.len(), 2);
}

#[test]
fn a_second_gateway_on_the_same_directory_is_refused_until_the_first_is_gone() {
    let d = dir();
    let (first, _) = Journal::open(&d.0, TTL, 100).unwrap();
    first.opened(key(1), fp(1)).unwrap();
    let error = Journal::open(&d.0, TTL, 100).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
    assert!(error.to_string().contains(LOCK_FILE_NAME), "{error}");
    // The first one's file is untouched by the refused start.
    assert_eq!(first.records(), 1);
    drop(first);
    let (_, recovered) = Journal::open(&d.0, TTL, 100).unwrap();
    assert_eq!(recovered.in_doubt, vec![(key(1), fp(1))]);
}
