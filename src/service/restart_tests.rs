//! Request ids across a restart (docs/design.md §7): the journal of `--state-dir`, and retries the
//! caller declares.

use super::*;
use crate::idempotency::Journal;

fn journaled(up: &Arc<Scripted>, dir: &StateDir) -> ChimeGateway<Arc<Scripted>> {
    let (journal, recovered) = Journal::open(&dir.0, DEFAULT_IDEMPOTENCY_TTL, 100).unwrap();
    let ids = RequestIds::journaled(
        DEFAULT_IDEMPOTENCY_TTL,
        DEFAULT_IDEMPOTENCY_CAPACITY,
        journal,
        recovered,
    );
    ChimeGateway::new(up.clone(), policy(3), 4).with_request_ids(ids)
}

fn declared(
    mut request: Request<CreateUserRequest>,
    key: &'static str,
    n: &'static str,
) -> Request<CreateUserRequest> {
    request.metadata_mut().insert(key, MetadataValue::from_static(n));
    request
}

#[tokio::test]
async fn a_call_cut_mid_attempt_is_in_doubt_for_the_next_process_with_the_journal() {
    let dir = StateDir::new();
    let up = Arc::new(Scripted {
        delay: Duration::from_millis(200),
        ..Default::default()
    });
    let first = journaled(&up, &dir);
    // The process dies while the attempt is out: the call's future is dropped mid-attempt.
    let cut = tokio::time::timeout(Duration::from_millis(50), first.create_user(with_email(ID))).await;
    assert!(cut.is_err());
    drop(first);
    let up = scripted(vec![status(409, None)], vec![found("mine")]);
    let second = journaled(&up, &dir);
    let retry = second.create_user(with_email(ID)).await.unwrap();
    assert_eq!(user_id(&retry), "mine");
    assert!(flag(retry.metadata(), RECONCILED_KEY));
    assert_eq!(counts(&up), (1, 1));
}

#[tokio::test]
async fn a_call_that_ends_knowing_its_outcome_leaves_nothing_in_doubt() {
    let dir = StateDir::new();
    let up = scripted(vec![status(503, None)], vec![]);
    let first = journaled(&up, &dir);
    first.create_user(with_email(ID)).await.unwrap();
    // Stopped in good order: the close that waited for another open is written.
    drop(first);
    let refused = scripted(vec![status(404, None)], vec![]);
    let second = journaled(&refused, &dir);
    let other = "0d2f1c3e-5b6a-4e7d-8c9b-a1b2c3d4e5f6";
    second.create_user(with_email(other)).await.unwrap_err();
    drop(second);
    let (_, recovered) = Journal::open(&dir.0, DEFAULT_IDEMPOTENCY_TTL, 100).unwrap();
    assert!(recovered.in_doubt.is_empty(), "{recovered:?}");
}

#[tokio::test]
async fn an_unknown_outcome_stays_in_doubt_in_the_journal() {
    let dir = StateDir::new();
    let up = scripted(vec![lost()], vec![Err(status(403, None))]);
    let first = journaled(&up, &dir);
    let s = first.create_user(with_email(ID)).await.unwrap_err();
    assert_eq!(reconciliation(&s).1.as_deref(), Some("failed"));
    drop(first);
    let (_, recovered) = Journal::open(&dir.0, DEFAULT_IDEMPOTENCY_TTL, 100).unwrap();
    assert_eq!(recovered.in_doubt.len(), 1);
}

#[tokio::test]
async fn a_declared_retry_looks_up_a_conflict_this_process_never_saw() {
    for (key, n) in [(PREVIOUS_ATTEMPTS_KEY, "1"), (GRPC_PREVIOUS_ATTEMPTS_KEY, "2")] {
        let up = scripted(vec![status(409, None)], vec![found("mine")]);
        let gw = ChimeGateway::new(up.clone(), policy(3), 4);
        let retry = gw.create_user(declared(with_email(ID), key, n)).await.unwrap();
        assert_eq!(user_id(&retry), "mine", "{key}");
        assert!(flag(retry.metadata(), RECONCILED_KEY), "{key}");
        assert_eq!(counts(&up), (1, 1), "{key}");
    }
}

#[tokio::test]
async fn a_first_attempt_or_a_call_without_a_request_id_is_not_a_declared_retry() {
    for request in [
        declared(with_email(ID), PREVIOUS_ATTEMPTS_KEY, "0"),
        declared(with_email(ID), GRPC_PREVIOUS_ATTEMPTS_KEY, "x"),
        with_email(ID),
        declared(with_email(""), PREVIOUS_ATTEMPTS_KEY, "1"),
    ] {
        let up = scripted(vec![status(409, None)], vec![found("someone")]);
        let gw = ChimeGateway::new(up.clone(), policy(3), 4);
        let s = gw.create_user(request).await.unwrap_err();
        assert_eq!(s.code(), Code::AlreadyExists);
        assert_eq!(counts(&up), (1, 0), "no lookup");
    }
}
