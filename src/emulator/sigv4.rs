//! Verifies AWS Signature Version 4 on incoming requests, as AWS's front door does: recompute the
//! canonical request from exactly the headers the client signed and compare signatures.
//!
//! The key derivation and HMAC come from `aws-sigv4`; this module owns the verifier's side, which
//! that crate does not provide: parsing the `Authorization` header, the scope and clock checks,
//! and AWS's error types and messages for each refusal.

use std::time::{Duration, SystemTime};

use http::request::Parts;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};
use time::{OffsetDateTime, PrimitiveDateTime, macros::format_description};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far the signing time may be from the emulator's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// URI-encoding for SigV4: everything but unreserved characters.
const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// The same, keeping `/` (for paths).
const PATH: &AsciiSet = &STRICT.remove(b'/');

/// Why a request's signature was refused; each is a 403 with AWS's error type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header.
    Missing,
    /// The header is not a complete SigV4 authorization.
    Incomplete(String),
    /// The access key id is not the configured one.
    UnknownKey,
    /// The signature is well-formed but wrong: bad scope, bad time, or a mismatch.
    Invalid(String),
}

impl AuthError {
    /// The AWS error type sent in `x-amzn-ErrorType`.
    pub fn error_type(&self) -> &'static str {
        match self {
            AuthError::Missing => "MissingAuthenticationTokenException",
            AuthError::Incomplete(_) => "IncompleteSignatureException",
            AuthError::UnknownKey => "UnrecognizedClientException",
            AuthError::Invalid(_) => "InvalidSignatureException",
        }
    }

    /// AWS's message for it.
    pub fn message(&self) -> String {
        match self {
            AuthError::Missing => "Missing Authentication Token".to_owned(),
            AuthError::UnknownKey => "The security token included in the request is invalid.".to_owned(),
            AuthError::Incomplete(m) | AuthError::Invalid(m) => m.clone(),
        }
    }
}

/// The key pair and scope a request must be signed with.
#[derive(Debug, Clone, Copy)]
pub struct Verifier<'a> {
    /// The accepted access key id.
    pub access_key_id: &'a str,
    /// Its secret.
    pub secret_access_key: &'a str,
    /// The scope's region.
    pub region: &'a str,
    /// The scope's service.
    pub service: &'a str,
}

/// The parts of a SigV4 `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Authorization<'h> {
    access_key_id: &'h str,
    date: &'h str,
    region: &'h str,
    service: &'h str,
    terminator: &'h str,
    signed_headers: &'h str,
    signature: &'h str,
}

impl Verifier<'_> {
    /// Checks the request's signature at time `now`.
    pub fn verify(&self, parts: &Parts, body: &[u8], now: SystemTime) -> Result<(), AuthError> {
        let header = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .ok_or(AuthError::Missing)?;
        let header = header
            .to_str()
            .map_err(|_| incomplete("Authorization header is not ASCII."))?;
        let auth = parse_authorization(header)?;
        if auth.access_key_id != self.access_key_id {
            return Err(AuthError::UnknownKey);
        }
        self.check_scope(&auth)?;
        let amz_date = header_str(parts, "x-amz-date").ok_or_else(|| {
            incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
        })?;
        let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
            incomplete("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
        })?;
        if !amz_date.starts_with(auth.date) {
            return Err(AuthError::Invalid(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP."
                    .to_owned(),
            ));
        }
        check_skew(amz_date, signed_at, now)?;
        if !auth.signed_headers.split(';').any(|h| h == "host") {
            return Err(AuthError::Invalid(
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.".to_owned(),
            ));
        }
        let canonical = canonical_request(parts, auth.signed_headers, body);
        let scope = format!("{}/{}/{}/aws4_request", auth.date, auth.region, auth.service);
        let string_to_sign = format!(
            "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(&canonical))
        );
        let key = aws_sigv4::sign::v4::generate_signing_key(
            self.secret_access_key,
            signed_at,
            self.region,
            self.service,
        );
        let expected = aws_sigv4::sign::v4::calculate_signature(key, string_to_sign.as_bytes());
        if constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
            Ok(())
        } else {
            Err(AuthError::Invalid(
                "The request signature we calculated does not match the signature you provided. Check your AWS \
                 Secret Access Key and signing method. Consult the service documentation for details."
                    .to_owned(),
            ))
        }
    }

    fn check_scope(&self, auth: &Authorization<'_>) -> Result<(), AuthError> {
        if auth.region != self.region {
            return Err(AuthError::Invalid(format!(
                "Credential should be scoped to a valid region, not '{}'.",
                auth.region
            )));
        }
        if auth.service != self.service {
            return Err(AuthError::Invalid(format!(
                "Credential should be scoped to correct service: '{}'.",
                self.service
            )));
        }
        if auth.terminator != "aws4_request" {
            return Err(AuthError::Invalid(format!(
                "Credential should be scoped with a valid terminator: 'aws4_request', not '{}'.",
                auth.terminator
            )));
        }
        Ok(())
    }
}

/// Signs `request` as an AWS SDK does (SigV4, signature in headers), for tests that talk to the
/// emulator over raw HTTP. The verifier never uses it: signing and verifying stay independent.
///
/// Refuses what an SDK could not send: a header value that is not UTF-8, no Host header and no
/// authority in the URI, a request target without a path.
pub fn sign(
    request: &mut http::Request<Vec<u8>>,
    (access_key_id, secret_access_key): (&str, &str),
    (region, service): (&str, &str),
    at: SystemTime,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings};
    let identity =
        aws_credential_types::Credentials::new(access_key_id, secret_access_key, None, None, "sign").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(at)
        .settings(SigningSettings::default())
        .build()?
        .into();
    let uri = request.uri().to_string();
    let headers = request
        .headers()
        .iter()
        .map(|(k, v)| Ok((k.as_str(), std::str::from_utf8(v.as_bytes())?)))
        .collect::<Result<Vec<_>, std::str::Utf8Error>>()
        .map_err(|_| "a header value that is not UTF-8 cannot be signed")?;
    if request.uri().authority().is_none() && !request.headers().contains_key(http::header::HOST) {
        return Err("a request without a Host header or an authority cannot be signed".into());
    }
    if !request.uri().path().starts_with('/') {
        return Err("a request target without a path (authority or asterisk form) cannot be signed".into());
    }
    let signable = SignableRequest::new(
        request.method().as_str(),
        &uri,
        headers.into_iter(),
        SignableBody::Bytes(request.body()),
    )?;
    let (instructions, _) = aws_sigv4::http_request::sign(signable, &params)?.into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}

fn incomplete(message: &str) -> AuthError {
    AuthError::Incomplete(message.to_owned())
}

impl Authorization<'_> {
    /// The header again, in the form SDKs send (for the fuzzers' round trip).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn render(&self) -> String {
        format!(
            "{ALGORITHM} Credential={}/{}/{}/{}/{}, SignedHeaders={}, Signature={}",
            self.access_key_id,
            self.date,
            self.region,
            self.service,
            self.terminator,
            self.signed_headers,
            self.signature
        )
    }
}

/// Reads an `Authorization` header: the algorithm, then `Credential`, `SignedHeaders` and
/// `Signature` in any order (unknown parameters ignored).
pub(crate) fn parse_authorization(header: &str) -> Result<Authorization<'_>, AuthError> {
    let rest = header
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| {
            incomplete(&format!(
                "Unsupported Authorization Type; only {ALGORITHM} is accepted."
            ))
        })?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=').unwrap_or((part.trim(), ""));
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed_headers = Some(v),
            "Signature" => signature = Some(v),
            _ => {}
        }
    }
    let credential = require(credential, "Credential")?;
    let signed_headers = require(signed_headers, "SignedHeaders")?;
    let signature = require(signature, "Signature")?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = scope[..] else {
        return Err(incomplete(&format!(
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '{credential}'"
        )));
    };
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        terminator,
        signed_headers,
        signature,
    })
}

fn require<'h>(value: Option<&'h str>, name: &str) -> Result<&'h str, AuthError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| incomplete(&format!("Authorization header requires '{name}' parameter.")))
}

fn parse_amz_date(value: &str) -> Option<SystemTime> {
    let format = format_description!("[year][month][day]T[hour][minute][second]Z");
    let t = PrimitiveDateTime::parse(value, format).ok()?.assume_utc();
    Some(t.into())
}

fn amz_date(t: SystemTime) -> String {
    let format = format_description!("[year][month][day]T[hour][minute][second]Z");
    OffsetDateTime::from(t).format(format).unwrap_or_default()
}

fn check_skew(amz: &str, signed_at: SystemTime, now: SystemTime) -> Result<(), AuthError> {
    if signed_at + MAX_SKEW < now {
        return Err(AuthError::Invalid(format!(
            "Signature expired: {amz} is now earlier than {} ({} - 15 min.)",
            amz_date(now - MAX_SKEW),
            amz_date(now)
        )));
    }
    if signed_at > now + MAX_SKEW {
        return Err(AuthError::Invalid(format!(
            "Signature not yet current: {amz} is still later than {} ({} + 15 min.)",
            amz_date(now + MAX_SKEW),
            amz_date(now)
        )));
    }
    Ok(())
}

/// The SigV4 canonical request over exactly the headers the client signed, canonicalized as AWS
/// (and the SDKs' signer, `aws-sigv4`) do: the path with dot and empty segments removed, then
/// encoded again; the query read as a form (`+` is a space), each name and value encoded, sorted;
/// header values with their spaces trimmed and runs of spaces collapsed.
pub fn canonical_request(parts: &Parts, signed_headers: &str, body: &[u8]) -> String {
    let path = utf8_percent_encode(&normalize_path(parts.uri.path()), PATH).to_string();
    let query = canonical_query(parts.uri.query().unwrap_or(""));
    let mut headers = String::new();
    for name in signed_headers.split(';') {
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&header_values(parts, name));
        headers.push('\n');
    }
    let payload = header_str(parts, "x-amz-content-sha256")
        .map_or_else(|| hex::encode(Sha256::digest(body)), str::to_owned);
    format!(
        "{}\n{path}\n{query}\n{headers}\n{signed_headers}\n{payload}",
        parts.method
    )
}

/// RFC 3986 section 5.2.4 (remove dot segments), and empty segments too, as SigV4 asks; a path
/// that ended in a directory keeps its trailing `/`.
fn normalize_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut normalized = format!("/{}", segments.join("/"));
    let directory = ["/", "/.", "/..", "/./", "/../"]
        .iter()
        .any(|end| path.ends_with(end));
    if directory && !normalized.ends_with('/') {
        normalized.push('/');
    }
    normalized
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (encode(&k), encode(&v)))
        .collect();
    pairs.sort();
    let pairs: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join("&")
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, STRICT).to_string()
}

fn header_values(parts: &Parts, name: &str) -> String {
    let values: Vec<String> = parts
        .headers
        .get_all(name)
        .iter()
        .map(|v| collapse_spaces(&String::from_utf8_lossy(v.as_bytes())))
        .collect();
    if values.is_empty() && name == "host" {
        return parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
    }
    values.join(",")
}

/// Spaces only (not tabs or other whitespace): trimmed at both ends, runs made one.
fn collapse_spaces(value: &str) -> String {
    value
        .split(' ')
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn header_str<'p>(parts: &'p Parts, name: &str) -> Option<&'p str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[path = "sigv4_tests.rs"]
mod tests;
