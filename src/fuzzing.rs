//! Entry points for the fuzzers in `fuzz/` (and for the property tests that run them in CI): the
//! two parsers of untrusted input. Each must never panic, whatever the bytes.

use aws_smithy_runtime_api::http::Headers;

use crate::{
    chime, error::CallError, error::UpstreamError, pb::chime::v1::CreateUserRequest, translate, validate,
};

/// The caller's side: protobuf bytes -> decode -> validate -> SDK input, or a status with details.
pub fn request_path(data: &[u8]) {
    let Ok(request) = <CreateUserRequest as prost::Message>::decode(data) else {
        return;
    };
    match validate::validate(&request) {
        Ok(()) => {
            let input = translate::to_input(request);
            assert!(input.account_id.is_some());
        }
        Err(violations) => {
            let status = CallError::Invalid(violations).to_status();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
        }
    }
}

/// The upstream's side of an error: status, header values and body -> the caller's status.
///
/// The first two bytes pick the HTTP status; the next three bytes' lengths cut header values for
/// `x-amzn-ErrorType`, `x-amzn-RequestId` and `Retry-After` from the rest; what remains is the body.
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
    let status = CallError::Upstream {
        error: UpstreamError::Response(response),
        attempts: 1,
        reconciliation: None,
    }
    .to_status();
    assert_ne!(status.code(), tonic::Code::Ok);
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn the_request_path_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            request_path(&data);
        }

        #[test]
        fn the_upstream_error_path_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            upstream_error(&data);
        }

        #[test]
        fn json_error_bodies_never_panic(
            code in "\\PC{0,12}", message in "\\PC{0,40}", kind in "\\PC{0,40}", status in 100u16..600
        ) {
            let body = serde_json::json!({"Code": code, "Message": message, "__type": kind}).to_string();
            let mut data = vec![(status >> 8) as u8, status as u8, 0, 0, 0];
            data.extend_from_slice(body.as_bytes());
            upstream_error(&data);
        }
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
