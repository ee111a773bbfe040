//! The ledger with plain values: what is kept, for how long, and who runs.

use std::{
    hash::BuildHasher,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer(String);

impl Keep for Answer {
    fn store(&self, into: &mut Vec<u8>) {
        into.extend_from_slice(self.0.as_bytes());
    }

    fn replay(stored: &[u8]) -> Self {
        Self(String::from_utf8(stored.to_vec()).unwrap())
    }
}

type L = Ledger<Answer, &'static str>;

fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(60)
}

fn ledger() -> L {
    Ledger::new(Duration::from_secs(60), 100)
}

fn key(n: u128) -> Key {
    Key::digest("acct", uuid::Uuid::from_u128(n))
}

fn request(email: &str) -> CreateUserRequest {
    CreateUserRequest {
        account_id: "acct".into(),
        email: Some(email.into()),
        ..Default::default()
    }
}

fn fp(email: &str) -> Fingerprint {
    Fingerprint::digest(&request(email))
}

/// Runs one call that answers `ending` and counts that it ran.
async fn run(
    ledger: &L,
    key: Key,
    fingerprint: Fingerprint,
    runs: &AtomicU32,
    ending: Ending<Answer, &'static str>,
) -> Outcome<Answer, &'static str> {
    ledger
        .run(key, fingerprint, false, far(), |_progress| async {
            runs.fetch_add(1, Ordering::SeqCst);
            ending
        })
        .await
}

fn answer(outcome: &Outcome<Answer, &'static str>) -> (Result<Answer, &'static str>, bool) {
    match outcome {
        Outcome::Answer { result, replayed } => (result.clone().map_err(|e| *e), *replayed),
        Outcome::Reused => panic!("reused"),
        Outcome::Waited => panic!("waited"),
    }
}

fn final_answer(text: &str) -> Ending<Answer, &'static str> {
    Ending::Final(Answer(text.into()))
}

#[tokio::test]
async fn a_repeat_gets_the_kept_answer_without_running() {
    let (l, runs) = (ledger(), AtomicU32::new(0));
    let first = run(&l, key(1), fp("a@x.io"), &runs, final_answer("user-1")).await;
    assert_eq!(answer(&first), (Ok(Answer("user-1".into())), false));
    let again = run(&l, key(1), fp("a@x.io"), &runs, final_answer("user-2")).await;
    assert_eq!(answer(&again), (Ok(Answer("user-1".into())), true));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn another_id_or_another_account_is_another_call() {
    let (l, runs) = (ledger(), AtomicU32::new(0));
    run(&l, key(1), fp("a@x.io"), &runs, final_answer("1")).await;
    run(&l, key(2), fp("a@x.io"), &runs, final_answer("2")).await;
    let other_account = Key::digest("acct2", uuid::Uuid::from_u128(1));
    run(&l, other_account, fp("a@x.io"), &runs, final_answer("3")).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_passing_answer_is_not_kept_and_the_repeat_runs_again() {
    let (l, runs) = (ledger(), AtomicU32::new(0));
    let passing = Ending::Transient("throttled");
    let first = run(&l, key(1), fp("a@x.io"), &runs, passing).await;
    assert_eq!(answer(&first), (Err("throttled"), false));
    let again = run(&l, key(1), fp("a@x.io"), &runs, final_answer("user")).await;
    assert_eq!(answer(&again), (Ok(Answer("user".into())), false));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_different_request_under_a_kept_id_is_reused_and_runs_nothing() {
    let (l, runs) = (ledger(), AtomicU32::new(0));
    run(&l, key(1), fp("a@x.io"), &runs, final_answer("user")).await;
    let other = run(&l, key(1), fp("b@x.io"), &runs, final_answer("other")).await;
    assert!(matches!(other, Outcome::Reused));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_calls_with_one_id_run_once_and_share_even_a_passing_answer() {
    let l = Arc::new(ledger());
    let runs = Arc::new(AtomicU32::new(0));
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (l, runs) = (l.clone(), runs.clone());
            tokio::spawn(async move {
                let outcome = l
                    .run(key(1), fp("a@x.io"), false, far(), |_| async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ending::<Answer, _>::Transient("unavailable")
                    })
                    .await;
                answer(&outcome)
            })
        })
        .collect();
    let mut replayed = 0;
    for call in calls {
        let (result, r) = call.await.unwrap();
        assert_eq!(result, Err("unavailable"));
        replayed += usize::from(r);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(replayed, 7);
}

/// Runs a call that sends an attempt (whose outcome is `unknown` or not) and ends with `ending`;
/// whether it saw its id in doubt.
async fn seen_before(l: &L, unknown: bool, ending: Ending<Answer, &'static str>) -> bool {
    let seen = AtomicU32::new(0);
    let seen_by_call = &seen;
    l.run(key(1), fp("a@x.io"), false, far(), move |progress| async move {
        seen_by_call.store(u32::from(progress.before()), Ordering::SeqCst);
        progress.sent();
        progress.answered(unknown);
        ending
    })
    .await;
    seen.load(Ordering::SeqCst) == 1
}

#[tokio::test]
async fn an_unknown_outcome_leaves_the_id_in_doubt_until_an_answer_is_known() {
    let l = ledger();
    let before = |unknown, ending| seen_before(&l, unknown, ending);
    let passing = || Ending::Transient("throttled");
    assert!(!before(false, passing()).await);
    assert!(
        !before(true, Ending::Transient("timeout")).await,
        "the first call knows of no earlier one"
    );
    assert!(before(false, passing()).await);
    assert!(
        before(false, passing()).await,
        "a call that learnt nothing keeps the doubt"
    );
    assert!(before(false, final_answer("user")).await);
    let next = run(&l, key(1), fp("a@x.io"), &AtomicU32::new(0), final_answer("x")).await;
    assert_eq!(answer(&next), (Ok(Answer("user".into())), true));
    assert!(!l.in_doubt(&key(1)), "a final answer settles the doubt");
}

#[tokio::test]
async fn a_call_cancelled_after_sending_leaves_its_id_in_doubt() {
    let l = ledger();
    let call = l.run(key(1), fp("a@x.io"), false, far(), |progress| async move {
        progress.sent();
        std::future::pending::<Ending<Answer, &'static str>>().await
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(50), call)
            .await
            .is_err()
    );
    assert!(l.in_doubt(&key(1)));
    let other = run(&l, key(1), fp("b@x.io"), &AtomicU32::new(0), final_answer("x")).await;
    assert!(
        matches!(other, Outcome::Reused),
        "the doubt keeps its request's fingerprint"
    );
}

#[tokio::test]
async fn answers_expire_after_the_ttl() {
    let l = L::new(Duration::from_millis(100), 100);
    let runs = AtomicU32::new(0);
    run(&l, key(1), fp("a@x.io"), &runs, final_answer("1")).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let again = run(&l, key(1), fp("a@x.io"), &runs, final_answer("2")).await;
    assert_eq!(answer(&again), (Ok(Answer("2".into())), false));
}

#[tokio::test]
async fn the_capacity_bounds_what_is_kept_and_large_answers_weigh_more() {
    let l = L::new(Duration::from_secs(60), 20);
    let runs = AtomicU32::new(0);
    for n in 0..100 {
        run(&l, key(n), fp("a@x.io"), &runs, final_answer("small")).await;
    }
    assert!(l.kept() <= 20, "{}", l.kept());
    let l = L::new(Duration::from_secs(60), 20);
    let big = "x".repeat(3 * WEIGHT_UNIT + 1);
    run(&l, key(1), fp("a@x.io"), &runs, Ending::Final(Answer(big))).await;
    assert_eq!(l.weight(), 4);
}

#[test]
fn fingerprints_tell_every_field_and_its_presence_apart() {
    let base = CreateUserRequest {
        account_id: "acct".into(),
        email: Some("a@x.io".into()),
        username: Some("jane".into()),
        user_type: 1,
        request_id: "3f2b9c4e-8d1a-4c3e-9f6b-2a7d5e8c1b90".into(),
    };
    let variants = [
        CreateUserRequest {
            account_id: "acct2".into(),
            ..base.clone()
        },
        CreateUserRequest {
            email: Some("b@x.io".into()),
            ..base.clone()
        },
        CreateUserRequest {
            username: None,
            ..base.clone()
        },
        CreateUserRequest {
            username: Some(String::new()),
            ..base.clone()
        },
        CreateUserRequest {
            user_type: 2,
            ..base.clone()
        },
        CreateUserRequest {
            account_id: "acct".into(),
            email: None,
            username: Some("a@x.io".into()),
            ..base.clone()
        },
    ];
    let local = KeyedHasher::new();
    let local = |r: &CreateUserRequest| Fingerprint::keyed(r, &local);
    for v in &variants {
        assert_ne!(Fingerprint::digest(v), Fingerprint::digest(&base), "{v:?}");
        assert_ne!(local(v), local(&base), "{v:?}");
    }
    let other_id = CreateUserRequest {
        request_id: String::new(),
        ..base.clone()
    };
    assert_eq!(Fingerprint::digest(&other_id), Fingerprint::digest(&base));
    assert_eq!(local(&other_id), local(&base));
}

// Keys and fingerprints are this process's own without a journal, and its directory's with one:
// the same for the same call, different for another account or id, and under another secret,
// different again. A journal of an earlier version still in doubt keeps them digests.
#[test]
fn a_ledger_identifies_calls_by_its_own_secret_or_its_journals() {
    let id = uuid::Uuid::from_u128(1);
    let call = request("a@x.io");
    let (l, other) = (ledger(), ledger());
    let (key, fingerprint) = l.identify(&call, id);
    assert_eq!(l.identify(&call, id), (key, fingerprint));
    assert_ne!(key, Key::digest("acct", id));
    assert_ne!(fingerprint, Fingerprint::digest(&call));
    assert_ne!(other.identify(&call, id).0, key);
    assert_ne!(other.identify(&call, id).1, fingerprint);
    let other_account = CreateUserRequest {
        account_id: "acct2".into(),
        ..call.clone()
    };
    assert_ne!(l.identify(&other_account, id).0, key);
    assert_ne!(l.identify(&call, uuid::Uuid::from_u128(2)).0, key);
    assert_eq!(format!("{:?}", KeyedHasher::new()), "KeyedHasher(..)");

    let dir = std::env::temp_dir().join(format!("chime-ledger-{}", uuid::Uuid::new_v4()));
    let ttl = Duration::from_secs(60);
    let with_journal = || {
        let mut l = ledger();
        let (journal, recovered) = Journal::open(&dir, ttl, 100).unwrap();
        l.attach_journal(journal, &recovered.in_doubt);
        l
    };
    let keyed = with_journal().identify(&call, id);
    assert_eq!(
        with_journal().identify(&call, id),
        keyed,
        "one directory, one secret"
    );
    assert_ne!(keyed, (key, fingerprint));
    assert_ne!(keyed, (Key::digest("acct", id), Fingerprint::digest(&call)));
    // An earlier version's directory: a key in doubt, and no secret.
    std::fs::remove_dir_all(&dir).unwrap();
    let (journal, _) = Journal::open(&dir, ttl, 100).unwrap();
    journal
        .opened(Key::digest("acct", id), Fingerprint::digest(&call))
        .unwrap();
    drop(journal);
    std::fs::remove_file(dir.join(journal::KEY_FILE_NAME)).unwrap();
    let l = with_journal();
    let digest = (Key::digest("acct", id), Fingerprint::digest(&call));
    assert_eq!(
        l.identify(&call, id),
        digest,
        "the id left in doubt, by its digest"
    );
    assert!(l.in_doubt(&digest.0));
    let other = uuid::Uuid::from_u128(77);
    assert_ne!(
        l.identify(&call, other).0,
        Key::digest("acct", other),
        "any other id is keyed"
    );
    drop(l);
    let _ = std::fs::remove_dir_all(&dir);
}

// The digests' window ends one TTL after the newest of them: from then on, even an id whose digest
// is held is known by its keyed hash, and no digest is computed.
#[tokio::test(start_paused = true)]
async fn digests_are_recognised_only_until_their_window_ends() {
    let dir = std::env::temp_dir().join(format!("chime-ledger-{}", uuid::Uuid::new_v4()));
    let ttl = Duration::from_secs(60);
    let call = request("a@x.io");
    let id = uuid::Uuid::from_u128(5);
    let digest = (Key::digest("acct", id), Fingerprint::digest(&call));
    let (journal, _) = Journal::open(&dir, ttl, 100).unwrap();
    journal.opened(digest.0, digest.1).unwrap();
    drop(journal);
    std::fs::remove_file(dir.join(journal::KEY_FILE_NAME)).unwrap();
    let (journal, recovered) = Journal::open(&dir, ttl, 100).unwrap();
    let mut l = L::new(Duration::from_secs(3600), 100);
    l.attach_journal(journal, &recovered.in_doubt);
    assert_eq!(l.identify(&call, id), digest);
    tokio::time::advance(ttl).await;
    assert_ne!(l.identify(&call, id), digest, "the window is over");
    assert!(l.in_doubt(&digest.0), "though the marker itself lives on");
    drop(l);
    let _ = std::fs::remove_dir_all(&dir);
}

// Taking the account in once for both gives the key and fingerprint that each function makes on its
// own, digests and this process's hashes alike, for requests with and without their optional fields.
#[test]
fn one_pass_over_the_account_gives_the_key_and_fingerprint_of_each_function() {
    let local = KeyedHasher::new();
    let full = CreateUserRequest {
        username: Some("someone".into()),
        user_type: 2,
        ..request("a@x.io")
    };
    let bare = CreateUserRequest {
        account_id: "acct2".into(),
        ..Default::default()
    };
    for call in [request("a@x.io"), full, bare] {
        for id in [uuid::Uuid::from_u128(1), uuid::Uuid::new_v4()] {
            let account = call.account_id.as_str();
            assert_eq!(
                identify(&call, id, None),
                (Key::digest(account, id), Fingerprint::digest(&call)),
                "{call:?}"
            );
            assert_eq!(
                identify(&call, id, Some(&local)),
                (Key::keyed(account, id, &local), Fingerprint::keyed(&call, &local)),
                "{call:?}"
            );
        }
    }
}

// Kills the hashing mutants (a constant hash or an ignored write keeps the ledger correct but makes
// every lookup a walk through one bucket): a key hashes to its digest's first eight bytes, and the
// hasher mixes every byte written to it.
#[test]
fn a_key_hashes_to_its_digest_head_and_the_hasher_mixes_bytes() {
    let k = key(7);
    let head = u64::from_le_bytes(*k.0.split_first_chunk::<8>().unwrap().0);
    assert_eq!(
        std::hash::BuildHasherDefault::<DigestHasher>::default().hash_one(k),
        head
    );
    assert_ne!(
        std::hash::BuildHasherDefault::<DigestHasher>::default().hash_one(key(8)),
        head
    );
    let mut bytes = DigestHasher::default();
    bytes.write(&[1, 2]);
    assert_eq!(bytes.finish(), 0x0102);
}

// Kills a mutant (the fingerprint check on a shared passing answer): a different request that
// waits on a call in flight under its id is told the id is reused, even when that call fails.
#[tokio::test]
async fn a_different_request_waiting_on_a_failing_call_is_reused() {
    let l = Arc::new(ledger());
    let first = {
        let l = l.clone();
        tokio::spawn(async move {
            let outcome = l
                .run(key(1), fp("a@x.io"), false, far(), |_| async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ending::<Answer, &'static str>::Transient("unavailable")
                })
                .await;
            answer(&outcome)
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let runs = AtomicU32::new(0);
    let second = run(&l, key(1), fp("b@x.io"), &runs, final_answer("b")).await;
    assert!(matches!(second, Outcome::Reused));
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(first.await.unwrap(), (Err("unavailable"), false));
}

// Kills the remaining hasher mutants: bytes that wrap around are mixed with `^`, and a second u64
// is mixed into the first.
#[test]
fn the_hasher_mixes_with_exclusive_or() {
    let mut wrapped = DigestHasher::default();
    wrapped.write(&[1, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(wrapped.finish(), 0);
    let mut twice = DigestHasher::default();
    twice.write_u64(0b1010);
    twice.write_u64(0b0110);
    assert_eq!(twice.finish(), 0b1100);
}

// Kills the Debug and `kept` mutants: the ledger counts what it keeps, and describes itself by those
// counts, never its contents.
#[tokio::test]
async fn the_ledger_debugs_as_its_counts() {
    let l = ledger();
    let runs = AtomicU32::new(0);
    run(&l, key(1), fp("a@x.io"), &runs, final_answer("secret@x.io")).await;
    assert_eq!(l.kept(), 1);
    run(&l, key(2), fp("b@x.io"), &runs, final_answer("b")).await;
    assert_eq!(l.kept(), 2);
    let text = format!("{l:?}");
    assert_eq!(text, "Ledger { answers: 2, in_doubt: 0 }");
}

/// Runs a call that sends an attempt, whose outcome is unknown, and ends.
async fn in_doubt(l: &L, n: u128) {
    l.run(key(n), fp("a@x.io"), false, far(), |progress| async move {
        progress.sent();
        progress.answered(true);
        Ending::Transient("timeout")
    })
    .await;
}

#[tokio::test]
async fn the_oldest_entry_goes_first_when_the_memory_is_full() {
    let l = L::new(Duration::from_secs(60), 2);
    let runs = AtomicU32::new(0);
    for n in 1..=3 {
        run(&l, key(n), fp("a@x.io"), &runs, final_answer("kept")).await;
    }
    assert_eq!((l.kept(), l.weight()), (2, 2));
    let third = run(&l, key(3), fp("a@x.io"), &runs, final_answer("again")).await;
    assert_eq!(answer(&third), (Ok(Answer("kept".into())), true));
    let first = run(&l, key(1), fp("a@x.io"), &runs, final_answer("again")).await;
    assert_eq!(answer(&first), (Ok(Answer("again".into())), false));
}

#[tokio::test]
async fn a_final_answer_replaces_the_doubt_and_is_weighed_once() {
    let l = ledger();
    in_doubt(&l, 1).await;
    assert!(l.in_doubt(&key(1)));
    assert_eq!(l.weight(), 1);
    run(&l, key(1), fp("a@x.io"), &AtomicU32::new(0), final_answer("user")).await;
    assert!(!l.in_doubt(&key(1)));
    assert_eq!((l.kept(), l.weight()), (1, 1));
    assert_eq!(format!("{l:?}"), "Ledger { answers: 1, in_doubt: 0 }");
    in_doubt(&l, 2).await;
    assert_eq!(format!("{l:?}"), "Ledger { answers: 1, in_doubt: 1 }");
}

#[tokio::test]
async fn ids_left_in_doubt_over_and_over_never_grow_the_memory() {
    let l = L::new(Duration::from_secs(60), 4);
    for _ in 0..50 {
        for n in 0..3 {
            in_doubt(&l, n).await;
        }
    }
    let (shards, queue) = l.shape();
    assert_eq!(shards, 1);
    assert!(queue <= 2 * 4 + 1, "{queue}");
    assert_eq!(l.weight(), 3);
    for n in 0..3 {
        assert!(l.in_doubt(&key(n)), "{n}");
    }
}

#[tokio::test]
async fn doubt_and_answers_expire_after_the_ttl() {
    let l = L::new(Duration::from_millis(100), 100);
    in_doubt(&l, 1).await;
    run(&l, key(2), fp("a@x.io"), &AtomicU32::new(0), final_answer("2")).await;
    assert!(l.in_doubt(&key(1)));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!l.in_doubt(&key(1)));
    assert_eq!(l.kept(), 0);
    assert!(
        !seen_before(&l, false, final_answer("x")).await,
        "expired doubt is no doubt"
    );
    // Writing lets out what expired.
    assert_eq!(l.weight(), 1);
}

#[tokio::test]
async fn a_ttl_too_long_for_the_clock_keeps_answers() {
    let l = L::new(Duration::MAX, 10);
    let runs = AtomicU32::new(0);
    run(&l, key(1), fp("a@x.io"), &runs, final_answer("1")).await;
    let again = run(&l, key(1), fp("a@x.io"), &runs, final_answer("2")).await;
    assert_eq!(answer(&again), (Ok(Answer("1".into())), true));
}

#[tokio::test]
async fn a_large_capacity_is_spread_over_shards_and_still_bounded() {
    let l = L::for_cores(Duration::from_secs(60), 10_000, 64);
    assert_eq!(l.shape().0, 8);
    let runs = AtomicU32::new(0);
    for n in 0..20_000 {
        run(&l, key(n), fp("a@x.io"), &runs, final_answer("x")).await;
    }
    let kept = l.kept();
    assert!((9_000..=10_000).contains(&kept), "{kept}");
    let shards = |capacity, cores| L::for_cores(Duration::from_secs(60), capacity, cores).shape().0;
    assert_eq!(shards(1_000_000, 64), 16);
    // One shard per four cores: on the two of a small sidecar, every call shares one.
    assert_eq!(
        [2, 3, 4, 7, 8, 12, 16, 32].map(|cores| shards(1_000_000, cores)),
        [1, 1, 1, 1, 2, 2, 4, 8]
    );
    assert_eq!(shards(10_000, 16), 4);
    assert_eq!(shards(2_048, 16), 2);
    assert_eq!(shards(1_000, 16), 1);
}

#[tokio::test]
async fn an_answer_heavier_than_the_memory_is_answered_but_not_kept() {
    let l = L::new(Duration::from_secs(60), 2);
    let runs = AtomicU32::new(0);
    run(&l, key(1), fp("a@x.io"), &runs, final_answer("small")).await;
    let exact = "x".repeat(2 * WEIGHT_UNIT);
    run(&l, key(3), fp("a@x.io"), &runs, Ending::Final(Answer(exact))).await;
    assert_eq!(
        (l.kept(), l.weight()),
        (1, 2),
        "as heavy as the memory: kept, alone"
    );
    run(&l, key(1), fp("a@x.io"), &runs, final_answer("small")).await;
    let big = "x".repeat(2 * WEIGHT_UNIT + 1);
    let first = run(
        &l,
        key(2),
        fp("a@x.io"),
        &runs,
        Ending::Final(Answer(big.clone())),
    )
    .await;
    assert_eq!(answer(&first), (Ok(Answer(big)), false));
    assert_eq!((l.kept(), l.weight()), (1, 1), "the small one stays");
}

// A ledger with no room still runs and answers every call; it keeps nothing, answer or doubt,
// whether the doubt is left by a call's ending, by a marker, or by a marker on a call in flight.
#[tokio::test]
async fn a_ledger_without_capacity_answers_every_call_and_keeps_nothing() {
    let l = L::new(Duration::from_secs(60), 0);
    let runs = AtomicU32::new(0);
    for _ in 0..2 {
        let outcome = run(&l, key(1), fp("a@x.io"), &runs, final_answer("user")).await;
        assert_eq!(answer(&outcome), (Ok(Answer("user".into())), false));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    in_doubt(&l, 2).await;
    l.mark(key(3), fp("a@x.io"));
    assert!(!l.in_doubt(&key(2)) && !l.in_doubt(&key(3)));
    assert_eq!((l.kept(), l.weight(), l.shape().1), (0, 0, 0));
    let outcome = l
        .run(key(4), fp("a@x.io"), false, far(), |_progress| async {
            l.mark(key(4), fp("a@x.io"));
            final_answer("user")
        })
        .await;
    assert_eq!(answer(&outcome), (Ok(Answer("user".into())), false));
    assert_eq!((l.weight(), l.shape().1), (0, 0));
}

// Kills the scratch-buffer mutants: a shard keeps the buffer its answers are written into, so that
// keeping an answer allocates nothing, but lets go of one a large answer grew.
#[tokio::test]
async fn a_shard_reuses_its_buffer_for_answers_but_not_one_a_large_answer_grew() {
    let l = L::new(Duration::from_secs(60), 100);
    let runs = AtomicU32::new(0);
    run(&l, key(1), fp("a@x.io"), &runs, final_answer("user")).await;
    let small = l.scratch();
    assert!(small >= 4, "{small}");
    let large = "x".repeat(5 * 1024);
    run(&l, key(2), fp("a@x.io"), &runs, Ending::Final(Answer(large))).await;
    assert_eq!(l.scratch(), 0, "a 5 KiB buffer is let go");
    let exact = "x".repeat(4 * 1024);
    run(&l, key(3), fp("a@x.io"), &runs, Ending::Final(Answer(exact))).await;
    assert_eq!(l.scratch(), 4 * 1024, "a 4 KiB one is kept");
}

#[tokio::test]
async fn a_waiter_runs_the_call_itself_when_the_first_is_dropped_unanswered() {
    let l = Arc::new(ledger());
    let runs = Arc::new(AtomicU32::new(0));
    let first = {
        let (l, runs) = (l.clone(), runs.clone());
        tokio::spawn(async move {
            l.run(key(1), fp("a@x.io"), false, far(), |_| async move {
                runs.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<Ending<Answer, &'static str>>().await
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let waiter = {
        let l = l.clone();
        tokio::spawn(async move {
            let outcome = l
                .run(key(1), fp("a@x.io"), false, far(), |progress| async move {
                    assert!(!progress.before(), "nothing was sent");
                    Ending::Final(Answer("mine".into()))
                })
                .await;
            answer(&outcome)
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    first.abort();
    assert_eq!(waiter.await.unwrap(), (Ok(Answer("mine".into())), false));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(!l.in_doubt(&key(1)));
}

#[tokio::test]
async fn a_waiter_gives_up_at_its_deadline() {
    let l = Arc::new(ledger());
    let first = {
        let l = l.clone();
        tokio::spawn(async move {
            l.run(key(1), fp("a@x.io"), false, far(), |_| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                final_answer("late")
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let soon = tokio::time::Instant::now() + Duration::from_millis(50);
    let waited = l
        .run(key(1), fp("a@x.io"), false, soon, |_| async {
            final_answer("never")
        })
        .await;
    assert!(matches!(waited, Outcome::Waited));
    assert!(matches!(first.await.unwrap(), Outcome::Answer { .. }));
}

#[tokio::test]
async fn a_call_dropped_with_nothing_in_flight_leaves_no_doubt_here_or_in_the_journal() {
    let dir = std::env::temp_dir().join(format!("chime-ledger-{}", uuid::Uuid::new_v4()));
    let ttl = Duration::from_secs(60);
    {
        let (journal, recovered) = Journal::open(&dir, ttl, 100).unwrap();
        let mut l = ledger();
        l.attach_journal(journal, &recovered.in_doubt);
        let call = l.run(key(1), fp("a@x.io"), false, far(), |progress| async move {
            progress.sent();
            progress.answered(false);
            std::future::pending::<Ending<Answer, &'static str>>().await
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(30), call)
                .await
                .is_err()
        );
        assert!(!l.in_doubt(&key(1)));
        let cut = l.run(key(2), fp("a@x.io"), false, far(), |progress| async move {
            progress.sent();
            std::future::pending::<Ending<Answer, &'static str>>().await
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(30), cut)
                .await
                .is_err()
        );
        assert!(l.in_doubt(&key(2)));
    }
    let (_, recovered) = Journal::open(&dir, ttl, 100).unwrap();
    assert_eq!(recovered.in_doubt, vec![(key(2), fp("a@x.io"))]);
    let mut l = ledger();
    l.attach_journal(Journal::open(&dir, ttl, 100).unwrap().0, &recovered.in_doubt);
    assert!(l.in_doubt(&key(2)), "a restarted ledger knows the doubt");
    let _ = std::fs::remove_dir_all(&dir);
}

// Kills the boundary mutants of expiry: an entry is gone at the very instant its TTL ends, for
// a repeat and for the queue alike.
#[tokio::test(start_paused = true)]
async fn an_entry_expires_at_the_very_end_of_its_ttl() {
    let ttl = Duration::from_millis(100);
    let l = L::new(ttl, 100);
    let runs = AtomicU32::new(0);
    run(&l, key(1), fp("a@x.io"), &runs, final_answer("1")).await;
    tokio::time::advance(ttl).await;
    assert_eq!(l.kept(), 0, "not counted at the very end of its TTL");
    let again = run(&l, key(1), fp("a@x.io"), &runs, final_answer("2")).await;
    assert_eq!(answer(&again), (Ok(Answer("2".into())), false));
    run(&l, key(2), fp("a@x.io"), &runs, final_answer("3")).await;
    tokio::time::advance(ttl).await;
    // Written exactly one TTL after key 2 (and key 1's second answer): both let out.
    run(&l, key(3), fp("a@x.io"), &runs, final_answer("4")).await;
    assert_eq!(l.weight(), 1);
    tokio::time::advance(ttl).await;
    l.mark(key(3), fp("a@x.io"));
    assert!(
        l.in_doubt(&key(3)),
        "an answer at the end of its TTL gives way to doubt"
    );
}

// Kills the mutants of the table's rehash: hashbrown rebuilds a table worn by removals, hashing
// each slot again by its record; long after the first records were let out, every key kept is
// still found.
#[tokio::test]
async fn keys_are_found_after_churn_has_rebuilt_the_table() {
    let l = L::new(Duration::from_secs(60), 100);
    let runs = AtomicU32::new(0);
    for n in 0..20_000 {
        run(&l, key(n), fp("a@x.io"), &runs, final_answer(&n.to_string())).await;
    }
    assert_eq!(l.kept(), 100);
    for n in 19_900..20_000 {
        let again = run(&l, key(n), fp("a@x.io"), &runs, final_answer("again")).await;
        assert_eq!(answer(&again), (Ok(Answer(n.to_string())), true), "{n}");
    }
    assert_eq!(runs.load(Ordering::Relaxed), 20_000);
}

// Kills the mutants of `unlink` and `forget`: a repeat of an expired answer takes the answer's
// whole weight off the memory as it starts, and nothing comes back if it ends with nothing to keep.
#[tokio::test(start_paused = true)]
async fn a_repeat_of_an_expired_answer_takes_its_weight_off_as_it_starts() {
    let ttl = Duration::from_millis(100);
    let l = L::new(ttl, 100);
    let runs = AtomicU32::new(0);
    let heavy = "x".repeat(2 * WEIGHT_UNIT);
    run(&l, key(1), fp("a@x.io"), &runs, Ending::Final(Answer(heavy))).await;
    assert_eq!(l.weight(), 2);
    tokio::time::advance(ttl).await;
    let outcome = l
        .run(key(1), fp("a@x.io"), false, far(), |_| async {
            assert_eq!(l.weight(), 0, "gone while the repeat runs");
            Ending::<Answer, &'static str>::Transient("throttled")
        })
        .await;
    assert!(matches!(outcome, Outcome::Answer { .. }));
    assert_eq!(l.weight(), 0);
}

// Kills the mutants of the queue's bound: stale places count against twice the capacity, and
// the queue lets out its oldest live entry only once it holds more than that.
#[tokio::test]
async fn the_queue_holds_twice_the_capacity_before_doubt_churn_pushes_the_oldest_out() {
    let l = L::new(Duration::from_secs(60), 4);
    in_doubt(&l, 1).await;
    for _ in 0..7 {
        in_doubt(&l, 2).await;
    }
    assert_eq!(l.shape().1, 8);
    assert!(l.in_doubt(&key(1)), "8 places: none over the bound yet");
    in_doubt(&l, 2).await;
    assert!(!l.in_doubt(&key(1)), "9 places: the oldest goes");
    assert!(l.in_doubt(&key(2)));
}

// Kills the mutants of replacing a settled entry: the old one's weight comes off, and its stale
// record, at the front, goes at the same write.
#[tokio::test]
async fn doubt_recorded_twice_is_weighed_once() {
    let dir = std::env::temp_dir().join(format!("chime-ledger-{}", uuid::Uuid::new_v4()));
    let (journal, _) = Journal::open(&dir, Duration::from_secs(60), 100).unwrap();
    let mut l = ledger();
    let recovered = [(key(1), fp("a@x.io")), (key(1), fp("a@x.io"))];
    l.attach_journal(journal, &recovered);
    assert_eq!(l.weight(), 1);
    assert_eq!(l.shape().1, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_progress_debugs_as_what_it_knows() {
    assert_eq!(
        format!("{:?}", Progress::none()),
        "Progress { request_id: false, unsettled: false, before: false }"
    );
}

// Kills the mutants of `mark`: a dropped call's doubt marks its own run, never another request's,
// and never replaces a kept answer while it lives.
#[tokio::test]
async fn a_mark_lands_on_its_own_run_or_in_doubt_and_never_on_a_kept_answer() {
    let l = L::new(Duration::from_millis(200), 100);
    let runs = AtomicU32::new(0);
    run(&l, key(1), fp("a@x.io"), &runs, final_answer("kept")).await;
    l.mark(key(1), fp("a@x.io"));
    assert!(!l.in_doubt(&key(1)));
    assert_eq!(l.kept(), 1);
    l.mark(key(2), fp("a@x.io"));
    assert!(l.in_doubt(&key(2)), "nothing there: a marker");
    tokio::time::sleep(Duration::from_millis(250)).await;
    l.mark(key(1), fp("a@x.io"));
    assert!(l.in_doubt(&key(1)), "the answer expired: a marker");
    // Marks arriving while a call runs: another request's does not count, its own does.
    let l = ledger();
    for (marker, left_in_doubt) in [("b@x.io", false), ("a@x.io", true)] {
        let outcome = l
            .run(key(3), fp("a@x.io"), false, far(), |_| async {
                l.mark(key(3), fp(marker));
                Ending::<Answer, &'static str>::Transient("throttled")
            })
            .await;
        assert!(matches!(outcome, Outcome::Answer { .. }));
        assert_eq!(l.in_doubt(&key(3)), left_in_doubt, "marked by {marker}");
    }
}

// The worst case of the memory bound stated in docs/configuration.md ("Memory"): every entry an
// answer of exactly one weight unit (the most bytes an entry may hold), and markers written over
// and over on the same keys, so that stale records make the records' queue its longest (twice the
// capacity).
#[tokio::test]
async fn a_full_memory_of_the_largest_answers_stays_within_its_bound() {
    const BOUND: usize = 12 << 20;
    let capacity = 10_000;
    let l = L::new(Duration::from_secs(60), capacity);
    let runs = AtomicU32::new(0);
    let unit = "x".repeat(WEIGHT_UNIT);
    let mut peak = 0;
    let mut n = 0;
    for round in 0..3 {
        for i in 0..u128::from(capacity) {
            n += 1;
            if round == 1 && i % 2 == 0 {
                in_doubt(&l, 1_000_000 + i % 64).await;
            } else {
                let answer = Ending::Final(Answer(unit.clone()));
                drop(run(&l, key(n), fp("a@x.io"), &runs, answer).await);
            }
            if i % 500 == 0 {
                peak = peak.max(l.heap_bytes());
            }
        }
    }
    peak = peak.max(l.heap_bytes());
    assert!(l.weight() <= capacity);
    assert!(peak <= BOUND, "{peak} bytes, over {BOUND}");
    let answers = usize::try_from(capacity).unwrap() * WEIGHT_UNIT;
    assert!(peak > answers, "{peak} bytes: the worst case is not reached");
}

// A call that ends knowing its outcome closes its key in the journal; the next call with the key
// may begin the moment the first one's entry is gone, and open the key again. The close must never
// land after that open: as the first call's close begins, a second call with the key runs, on
// another thread, to an end in doubt (if it can within 200 ms). Its key must stay open in the
// journal.
#[test]
fn a_close_never_erases_the_next_calls_open_of_the_same_key() {
    fn block_on<F: Future>(f: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(f)
    }
    let dir = std::env::temp_dir().join(format!("chime-ledger-{}", uuid::Uuid::new_v4()));
    let ttl = Duration::from_secs(60);
    let (journal, recovered) = Journal::open(&dir, ttl, 100).unwrap();
    let mut l = ledger();
    l.attach_journal(journal, &recovered.in_doubt);
    let l = Arc::new(l);
    let (racer, raced) = std::sync::mpsc::channel();
    let second = l.clone();
    l.journal().unwrap().before_close(Box::new(move |key| {
        let call = std::thread::spawn(move || {
            block_on(
                second.run(key, fp("a@x.io"), false, far(), |progress| async move {
                    progress.sent();
                    progress.answered(true);
                    Ending::Transient("unknown")
                }),
            )
        });
        let started = std::time::Instant::now();
        while !call.is_finished() && started.elapsed() < Duration::from_millis(200) {
            std::thread::sleep(Duration::from_millis(1));
        }
        racer.send(call).unwrap();
    }));
    block_on(l.run(key(1), fp("a@x.io"), false, far(), |progress| async move {
        progress.sent();
        progress.answered(false);
        Ending::Transient("settled: not sent")
    }));
    drop(raced.recv().unwrap().join().unwrap());
    assert!(l.in_doubt(&key(1)), "the second call left its key in doubt");
    drop(Arc::into_inner(l).unwrap());
    let (_, recovered) = Journal::open(&dir, ttl, 100).unwrap();
    assert_eq!(
        recovered.in_doubt,
        vec![(key(1), fp("a@x.io"))],
        "and in the journal"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
