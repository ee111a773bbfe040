//! Entry points for the coverage-guided fuzzers in `fuzz/` (afl.rs; `scripts/fuzz TARGET`) and for
//! the property tests that run them in every test run: the parsers of untrusted input, the
//! gateway's (caller protobuf, upstream error responses) and the emulator's (SigV4, HTTP requests).
//!
//! Each target asserts properties of what it reads, not only that it does not panic.
//! `unix_authority` (the `:authority` mender, checked against h2 itself) has a file of its own.

use std::{
    pin::Pin,
    task::{Context, Poll, Waker},
    time::{Duration, SystemTime},
};

use aws_smithy_runtime_api::http::Headers;
use bytes::Bytes;
use http::request::Parts;
use http_body::Body as _;
use tonic_types::StatusExt;
pub use unix_authority::unix_authority;
#[cfg(test)]
use unix_authority::{clean_connection, served_by_h2};

use crate::{
    chime,
    emulator::{
        self, Operation, Shared, list_users, routes,
        sigv4::{self, AuthError, Verifier},
        state::UserFilter,
        wire,
    },
    error::{self, CallError, UpstreamError},
    pb::chime::v1::CreateUserRequest,
    translate, validate,
};

mod unix_authority;

/// The caller's side: protobuf bytes -> decode -> validate -> SDK input, or a status with details.
///
/// A request that validates reaches the SDK input field for field and encodes back to itself; one
/// that does not is INVALID_ARGUMENT naming only the proto's fields, with the gateway's reason.
pub fn request_path(data: &[u8]) {
    let Ok(request) = <CreateUserRequest as prost::Message>::decode(data) else {
        return;
    };
    let encoded = prost::Message::encode_to_vec(&request);
    assert_eq!(
        <CreateUserRequest as prost::Message>::decode(encoded.as_slice()).as_ref(),
        Ok(&request)
    );
    match validate::validate(&request) {
        Ok(id) => {
            assert_eq!(id, validate::request_id(&request.request_id));
            assert_eq!(id.is_some(), !request.request_id.is_empty());
            let input = translate::to_input(request.clone());
            assert_eq!(input.account_id.as_deref(), Some(request.account_id.as_str()));
            assert_eq!(input.email, request.email);
            assert_eq!(input.username, request.username);
            let user_type = input.user_type.as_ref().map(|t| t.as_str().to_owned());
            let expected = match request.user_type {
                1 => Some("PrivateUser"),
                2 => Some("SharedDevice"),
                _ => None,
            };
            assert_eq!(user_type.as_deref(), expected);
        }
        Err(violations) => {
            assert!(!violations.is_empty());
            let status = CallError::Invalid(violations.clone()).to_status();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            let details = status.get_error_details();
            assert_eq!(
                details.error_info().map(|i| i.reason.as_str()),
                Some("INVALID_REQUEST")
            );
            let fields: Vec<&str> = details
                .bad_request()
                .expect("a BadRequest detail")
                .field_violations
                .iter()
                .map(|v| v.field.as_str())
                .collect();
            assert_eq!(fields, violations.iter().map(|v| v.field).collect::<Vec<_>>());
            assert!(
                fields
                    .iter()
                    .all(|f| ["account_id", "email", "user_type", "request_id"].contains(f))
            );
        }
    }
}

/// The upstream's side of an error: status, header values and body -> the caller's status.
///
/// The first two bytes pick the HTTP status; the next three bytes' lengths cut header values for
/// `x-amzn-ErrorType`, `x-amzn-RequestId` and `Retry-After` from the rest; what remains is the body.
///
/// The status has the table's code for the HTTP status, an `ErrorInfo` whose reason has the form
/// `google.rpc.ErrorInfo` requires, the HTTP status in its metadata, `RetryInfo` exactly where the
/// table says (with the upstream's `Retry-After`, at most a day, when it sent one) and the
/// upstream's request id.
pub fn upstream_error(data: &[u8]) {
    let Some((&[hi, lo, a, b, c], rest)) = data.split_first_chunk::<5>() else {
        return;
    };
    let status = 100 + u16::from_be_bytes([hi, lo]) % 500;
    let mut headers = Headers::new();
    let mut rest = rest;
    for (name, len) in [
        ("x-amzn-ErrorType", a),
        ("x-amzn-RequestId", b),
        ("Retry-After", c),
    ] {
        let (value, tail) = rest.split_at(usize::from(len).min(rest.len()));
        rest = tail;
        if let Ok(value) = std::str::from_utf8(value) {
            let _ = headers.try_insert(name.to_owned(), value.to_owned());
        }
    }
    let response = chime::error_response(status, &headers, rest);
    let request_id = response.request_id.clone();
    let retry_after = response.retry_after;
    let error = UpstreamError::Response(response);
    let rule = error::rule(&error);
    let grpc = CallError::Upstream {
        error,
        attempts: 1,
        reconciliation: None,
        budget_exhausted: false,
    }
    .to_status();
    assert_ne!(grpc.code(), tonic::Code::Ok);
    assert_eq!(grpc.code(), rule.code);
    let details = grpc.get_error_details();
    let info = details.error_info().expect("an ErrorInfo detail");
    assert!(error::is_reason(&info.reason), "{:?}", info.reason);
    assert_eq!(info.domain, error::UPSTREAM_DOMAIN);
    assert_eq!(info.metadata.get("http_status"), Some(&status.to_string()));
    let delay = details.retry_info().and_then(|r| r.retry_delay);
    assert_eq!(delay.is_some(), rule.retry_info);
    if rule.retry_info {
        assert_eq!(delay, Some(retry_after.unwrap_or(error::DEFAULT_RETRY_DELAY)));
    }
    assert!(retry_after.is_none_or(|d| d <= error::MAX_RETRY_AFTER));
    let sent_id = grpc
        .metadata()
        .get(error::REQUEST_ID_KEY)
        .and_then(|v| v.to_str().ok());
    if let Some(id) = sent_id {
        assert_eq!(Some(id), request_id.as_deref());
    }
}

/// A clock reading for the emulator targets, so that an input means the same on every run.
fn fuzz_clock() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600) // 2026-01-01T00:00:00Z
}

/// Reads fuzz input as an HTTP/1.1 request: request line, headers, blank line, then the body.
/// `None` when `httparse` or `http` refuses it (the emulator's server would never see it).
fn http_request(data: &[u8]) -> Option<(Parts, Vec<u8>)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = parsed.parse(data).ok()? else {
        return None;
    };
    let mut builder = http::Request::builder().method(parsed.method?).uri(parsed.path?);
    for h in parsed.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    let (parts, ()) = builder.body(()).ok()?.into_parts();
    Some((parts, data[head..].to_vec()))
}

/// Signs `parts` and `body` as an AWS SDK would, with the emulator's key, at `at`; whatever
/// signature or payload hash the input carried is dropped first. `None` when `aws-sigv4` itself
/// refuses the request.
fn signed(parts: &Parts, body: &[u8], at: SystemTime) -> Option<Parts> {
    let mut request = http::Request::from_parts(parts.clone(), body.to_vec());
    let headers = request.headers_mut();
    for name in [
        "authorization",
        "x-amz-date",
        "x-amz-content-sha256",
        "x-amz-security-token",
    ] {
        headers.remove(name);
    }
    if !headers.contains_key(http::header::HOST) {
        headers.insert(http::header::HOST, http::HeaderValue::from_static("localhost"));
    }
    sigv4::sign(
        &mut request,
        (
            emulator::DEFAULT_ACCESS_KEY_ID,
            emulator::DEFAULT_SECRET_ACCESS_KEY,
        ),
        (emulator::REGION, emulator::SERVICE),
        at,
    )
    .ok()?;
    Some(request.into_parts().0)
}

fn verifier() -> Verifier<'static> {
    Verifier {
        access_key_id: emulator::DEFAULT_ACCESS_KEY_ID,
        secret_access_key: emulator::DEFAULT_SECRET_ACCESS_KEY,
        region: emulator::REGION,
        service: emulator::SERVICE,
    }
}

/// The emulator's SigV4 verification, on an HTTP request read from the input.
///
/// - Any request: verifying never panics, a refusal has AWS's error type and a message, and an
///   `Authorization` header that parses renders back to a header that parses the same.
/// - The same request signed by `aws-sigv4` (the SDK's signer) verifies; signed 16 minutes
///   earlier it is refused as expired; with its body changed it is refused as a mismatch.
pub fn emulator_sigv4(data: &[u8]) {
    let Some((parts, body)) = http_request(data) else {
        return;
    };
    let now = fuzz_clock();
    if let Err(e) = verifier().verify(&parts, &body, now) {
        assert!(e.error_type().ends_with("Exception"));
        assert!(!e.message().is_empty());
    }
    if let Some(header) = parts.headers.get(http::header::AUTHORIZATION)
        && let Ok(header) = header.to_str()
        && let Ok(auth) = sigv4::parse_authorization(header)
    {
        let rendered = auth.render();
        assert_eq!(sigv4::parse_authorization(&rendered), Ok(auth), "{rendered}");
    }

    let Some(signed_parts) = signed(&parts, &body, now) else {
        return;
    };
    assert_eq!(
        verifier().verify(&signed_parts, &body, now),
        Ok(()),
        "a request signed by aws-sigv4 must verify: {signed_parts:?}"
    );
    let stale = signed(&parts, &body, now - sigv4::MAX_SKEW - Duration::from_secs(60));
    let refusal = verifier().verify(&stale.expect("signed once"), &body, now);
    assert!(
        matches!(&refusal, Err(AuthError::Invalid(m)) if m.starts_with("Signature expired")),
        "{refusal:?}"
    );
    let mut tampered = body.clone();
    tampered.push(b' ');
    assert!(matches!(
        verifier().verify(&signed_parts, &tampered, now),
        Err(AuthError::Invalid(_))
    ));
}

/// The emulator's request reading and serving, on an HTTP request read from the input: routing
/// (path, method, query), the ListUsers query and the CreateUser JSON body.
///
/// - Unsigned, every request is refused 403 before anything else is read.
/// - Signed, every answer has a status the emulator documents; every error carries
///   `x-amzn-ErrorType`, and the gateway's own reader gets back the same type and a message.
/// - A 201 describes the user asked for, in the account of the path; a repeat with an email is
///   409, and ListUsers then finds that user by email.
/// - A ListUsers page holds at most `max-results` users, all matching the filter.
/// - What the query and body readers accept renders back to input they read the same way.
pub fn emulator_request(data: &[u8]) {
    let Some((parts, body)) = http_request(data) else {
        return;
    };
    let query = parts.uri.query().unwrap_or("");
    let list = wire::ListUsersQuery::parse(query);
    let mut rendered = form_urlencoded::Serializer::new(String::new());
    for (name, value) in [
        ("user-email", &list.user_email),
        ("user-type", &list.user_type),
        ("max-results", &list.max_results),
        ("next-token", &list.next_token),
    ] {
        if let Some(value) = value {
            rendered.append_pair(name, value);
        }
    }
    assert_eq!(wire::ListUsersQuery::parse(&rendered.finish()), list);
    if let Ok(create) = serde_json::from_slice::<wire::CreateUserBody>(&body) {
        let again = serde_json::to_vec(&create).expect("serializes");
        assert_eq!(
            serde_json::from_slice::<wire::CreateUserBody>(&again).ok(),
            Some(create)
        );
    }

    let shared = Shared::new(emulator::EmulatorConfig::default());
    let now = fuzz_clock();
    let route = routes::route(&parts);
    let mut unsigned = parts.clone();
    unsigned.headers.remove(http::header::AUTHORIZATION);
    let answer = routes::serve(&shared, &unsigned, &body, route.clone(), now);
    assert_eq!(answer.status(), http::StatusCode::FORBIDDEN);
    error_reads_back(&answer);

    let Some(signed_parts) = signed(&parts, &body, now) else {
        return;
    };
    let answer = routes::serve(&shared, &signed_parts, &body, route.clone(), now);
    let status = answer.status().as_u16();
    assert!([200, 201, 400, 404, 409].contains(&status), "{status}");
    if status >= 400 {
        error_reads_back(&answer);
    }
    match route {
        None => assert_eq!(status, 404),
        Some((Operation::CreateUser, account)) if status == 201 => {
            let sent: wire::CreateUserBody = serde_json::from_slice(&body).unwrap_or_default();
            let user = &json_body(&answer)["User"];
            assert_eq!(user["AccountId"], account.as_str());
            assert_eq!(user["PrimaryEmail"].as_str(), sent.email.as_deref());
            assert_eq!(user["DisplayName"].as_str(), sent.username.as_deref());
            let shared_device = sent.user_type.as_deref() == Some("SharedDevice");
            assert_eq!(user["UserType"] == "SharedDevice", shared_device);
            assert!(uuid::Uuid::try_parse(user["UserId"].as_str().unwrap_or("")).is_ok());
            let again = routes::serve(
                &shared,
                &signed_parts,
                &body,
                Some((Operation::CreateUser, account.clone())),
                now,
            );
            if let Some(email) = sent.email {
                assert_eq!(again.status(), http::StatusCode::CONFLICT);
                let state = shared.state.lock().unwrap();
                let filter = UserFilter {
                    email: Some(&email),
                    shared_device: None,
                    from: 0,
                    max_results: 10,
                };
                let page = state.list(&account, &filter).expect("the account exists");
                assert_eq!(page.users.len(), 1);
            } else {
                assert_eq!(again.status(), http::StatusCode::CREATED);
            }
        }
        Some((Operation::ListUsers, _)) if status == 200 => {
            let page = json_body(&answer);
            let users = page["Users"].as_array().expect("Users is a list");
            let max = list
                .max_results
                .as_deref()
                .map_or(list_users::DEFAULT_MAX_RESULTS, |m| m.parse().unwrap());
            assert!(users.len() <= max);
            for user in users {
                if let Some(email) = &list.user_email {
                    assert!(
                        user["PrimaryEmail"]
                            .as_str()
                            .is_some_and(|e| e.eq_ignore_ascii_case(email))
                    );
                }
                if let Some(kind) = &list.user_type {
                    assert_eq!(&user["UserType"], kind.as_str());
                }
            }
        }
        Some(_) => {}
    }
}

/// An emulator error answer, read by the gateway's reader of upstream errors: the same type (AWS's
/// `x-amzn-ErrorType`, namespace dropped) and a message.
fn error_reads_back(answer: &http::Response<wire::Body>) {
    let error_type = answer
        .headers()
        .get("x-amzn-ErrorType")
        .and_then(|v| v.to_str().ok())
        .expect("every error has x-amzn-ErrorType");
    let mut headers = Headers::new();
    headers.insert("x-amzn-ErrorType", error_type.to_owned());
    let read = chime::error_response(answer.status().as_u16(), &headers, &body_bytes(answer));
    assert_eq!(read.error_type.as_deref(), error_type.split(':').next());
    assert!(read.message.is_some_and(|m| !m.is_empty()));
}

/// The bytes of an emulator answer (a `Full` body: one frame, ready at once).
fn body_bytes(answer: &http::Response<wire::Body>) -> Bytes {
    let mut body = answer.body().clone();
    match Pin::new(&mut body).poll_frame(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

fn json_body(answer: &http::Response<wire::Body>) -> serde_json::Value {
    serde_json::from_slice(&body_bytes(answer)).expect("the emulator answers JSON")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;

    /// Every committed seed and every input a fuzzer once found (`fuzz/regressions/TARGET/`), through
    /// its target: what AFL++ starts from holds the properties, and nothing found comes back.
    fn replay(target: &str, run: fn(&[u8])) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut seen = 0;
        for dir in [
            root.join("seeds").join(target),
            root.join("regressions").join(target),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                if let Err(panic) = std::panic::catch_unwind(|| run(&data)) {
                    panic!("{}: {panic:?}", path.display());
                }
                seen += 1;
            }
        }
        assert!(seen > 0, "no seeds for {target}");
    }

    #[test]
    fn the_request_path_seeds_and_regressions_hold() {
        replay("request_path", request_path);
    }

    #[test]
    fn the_upstream_error_seeds_and_regressions_hold() {
        replay("upstream_error", upstream_error);
    }

    #[test]
    fn the_emulator_sigv4_seeds_and_regressions_hold() {
        replay("emulator_sigv4", emulator_sigv4);
    }

    #[test]
    fn the_emulator_request_seeds_and_regressions_hold() {
        replay("emulator_request", emulator_request);
    }

    #[test]
    fn the_unix_authority_seeds_and_regressions_hold() {
        replay("unix_authority", unix_authority);
    }

    /// HTTP requests shaped like the emulator's routes, with arbitrary pieces.
    fn http_requests() -> impl Strategy<Value = Vec<u8>> {
        let method = prop::sample::select(vec!["GET", "POST", "PUT"]);
        let account = prop_oneof![Just(emulator::DEMO_ACCOUNT_ID.to_owned()), "[a-z0-9%./ -]{0,12}",];
        let query = prop::collection::vec(
            (
                prop::sample::select(vec![
                    "operation",
                    "user-email",
                    "user-type",
                    "max-results",
                    "next-token",
                    "x",
                ]),
                "[a-zA-Z0-9@.%+=&-]{0,16}",
            ),
            0..4,
        );
        let header = ("x-[a-z]{1,6}", "[ -~]{0,20}");
        let body = prop_oneof![
            Just(String::new()),
            (
                proptest::option::of("[a-z@.]{0,16}"),
                proptest::option::of("\\PC{0,8}"),
                proptest::option::of(prop::sample::select(vec!["PrivateUser", "SharedDevice", "Other"])),
            )
                .prop_map(|(email, username, user_type)| {
                    serde_json::json!({"Email": email, "Username": username, "UserType": user_type})
                        .to_string()
                }),
            "\\PC{0,30}",
        ];
        (method, account, query, prop::collection::vec(header, 0..3), body).prop_map(
            |(method, account, query, headers, body)| {
                let query: Vec<String> = query.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
                let mut text = format!(
                    "{method} /accounts/{account}/users?{} HTTP/1.1\r\nHost: localhost\r\n",
                    query.join("&")
                );
                for (name, value) in headers {
                    text.push_str(&format!("{name}: {value}\r\n"));
                }
                text.push_str("\r\n");
                text.push_str(&body);
                text.into_bytes()
            },
        )
    }

    /// What a gRPC client sends over the socket: the preface, then requests whose blocks mix
    /// the client's dynamic table, literals and never-indexed fields, with the socket's path,
    /// a host or no `:authority`, some large enough to need CONTINUATION frames or to pass the
    /// cap, each maybe followed by a message.
    fn unix_connections() -> impl Strategy<Value = Vec<u8>> {
        let authority = prop_oneof![
            Just(Some(b"/var/run/chime-gateway/grpc.sock".to_vec())),
            Just(Some(b"%2Ftmp%2Fgrpc.sock".to_vec())),
            Just(Some(b"localhost".to_vec())),
            Just(None),
        ];
        let field = (
            "[a-z][a-z0-9-]{0,12}",
            prop_oneof![4 => "[ -~]{0,40}", 1 => (0usize..20_000).prop_map(|n| "v".repeat(n))],
            any::<bool>(),
        );
        let request = (prop::collection::vec(field, 0..6), any::<bool>(), any::<bool>());
        (1u8..=255, authority, prop::collection::vec(request, 1..5)).prop_map(
            |(chunk, authority, requests)| {
                let mut encoder = loona_hpack::Encoder::new();
                let mut bytes = vec![chunk];
                bytes.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0");
                for (i, (fields, literal, message)) in (0u32..).zip(requests) {
                    let mut pseudo: Vec<(Vec<u8>, Vec<u8>)> = vec![
                        (b":method".to_vec(), b"POST".to_vec()),
                        (b":scheme".to_vec(), b"http".to_vec()),
                        (b":path".to_vec(), b"/chime.v1.ChimeService/CreateUser".to_vec()),
                    ];
                    if let Some(a) = &authority {
                        pseudo.push((b":authority".to_vec(), a.clone()));
                    }
                    let mut block = encoder.encode(pseudo.iter().map(|(n, v)| (&n[..], &v[..])));
                    for (name, value, never) in fields {
                        if literal || never {
                            block.push(if never { 0x10 } else { 0 });
                            for s in [name.as_bytes(), value.as_bytes()] {
                                loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, &mut block).unwrap();
                                block.extend_from_slice(s);
                            }
                        } else {
                            block.extend(encoder.encode([(name.as_bytes(), value.as_bytes())]));
                        }
                    }
                    let stream = 2 * i + 1;
                    let end_stream = if message { 0 } else { 0x1 };
                    let mut pieces = block.chunks(16_384).peekable();
                    let mut kind = 0x1;
                    while let Some(piece) = pieces.next() {
                        let mut flags = if kind == 0x1 { end_stream } else { 0 };
                        if pieces.peek().is_none() {
                            flags |= 0x4;
                        }
                        bytes.extend_from_slice(&u32::try_from(piece.len()).unwrap().to_be_bytes()[1..]);
                        bytes.extend_from_slice(&[kind, flags]);
                        bytes.extend_from_slice(&stream.to_be_bytes());
                        bytes.extend_from_slice(piece);
                        kind = 0x9;
                    }
                    if message {
                        bytes.extend_from_slice(&[0, 0, 7, 0, 0x1]);
                        bytes.extend_from_slice(&stream.to_be_bytes());
                        bytes.extend_from_slice(&[0, 0, 0, 0, 2, 0x0a, 0]);
                    }
                }
                bytes
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn the_unix_authority_holds_against_h2(data in unix_connections()) {
            unix_authority(&data);
        }
    }

    proptest! {
        #[test]
        fn the_request_path_holds(data in prop::collection::vec(any::<u8>(), 0..256)) {
            request_path(&data);
        }

        #[test]
        fn the_upstream_error_path_holds(data in prop::collection::vec(any::<u8>(), 0..256)) {
            upstream_error(&data);
        }

        #[test]
        fn json_error_bodies_hold(
            code in "\\PC{0,12}", message in "\\PC{0,40}", kind in "\\PC{0,40}", status in 100u16..600
        ) {
            let body = serde_json::json!({"Code": code, "Message": message, "__type": kind}).to_string();
            let mut data = vec![((status - 100) >> 8) as u8, (status - 100) as u8, 0, 0, 0];
            data.extend_from_slice(body.as_bytes());
            upstream_error(&data);
        }

        #[test]
        fn the_emulator_sigv4_holds(data in http_requests()) {
            emulator_sigv4(&data);
        }

        #[test]
        fn the_emulator_request_holds(data in http_requests()) {
            emulator_request(&data);
        }
    }

    /// The h2 side of `unix_authority` sees what h2 sees: requests from literal blocks, and a
    /// connection error for a block that names a table entry h2 never saw.
    #[test]
    fn the_mender_is_checked_against_h2_itself() {
        let literal = |name: &[u8], value: &[u8], out: &mut Vec<u8>| {
            out.push(0);
            for s in [name, value] {
                out.push(u8::try_from(s.len()).unwrap());
                out.extend_from_slice(s);
            }
        };
        let mut block = Vec::new();
        for (n, v) in [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/x"),
            (b"te", b"trailers"),
        ] {
            literal(n, v, &mut block);
        }
        let frames = |block: &[u8]| {
            let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec();
            bytes.extend_from_slice(&u32::try_from(block.len()).unwrap().to_be_bytes()[1..]);
            bytes.extend_from_slice(&[0x1, 0x5, 0, 0, 0, 1]);
            bytes.extend_from_slice(block);
            bytes
        };
        let limits = crate::server::ConnectionLimits::default();
        let (requests, reason) = served_by_h2(&frames(&block), &limits);
        assert_eq!(requests.len(), 1, "{reason:?}");
        assert_eq!(requests[0].headers["te"], "trailers");
        block.push(0x80 | 62);
        let (requests, reason) = served_by_h2(&frames(&block), &limits);
        assert!(requests.is_empty());
        assert_eq!(reason, Some(h2::Reason::PROTOCOL_ERROR));
        let (requests, reason) = served_by_h2(&clean_connection(&[(1, block)]), &limits);
        assert!(requests.is_empty());
        assert_eq!(reason, Some(h2::Reason::PROTOCOL_ERROR));
    }

    #[test]
    fn an_encoded_valid_request_reaches_the_sdk_input() {
        let request = CreateUserRequest {
            account_id: "a".into(),
            ..Default::default()
        };
        request_path(&prost::Message::encode_to_vec(&request));
    }
}
