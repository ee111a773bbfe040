//! The upstream calls through `aws-sdk-chime`: `CreateUser`, and the `ListUsers` lookup that settles
//! a create whose outcome is unknown; and the reading of their failures.
//!
//! [`Upstream`] is deliberately narrow so the service can be tested without sockets. The SDK's own
//! retries are off: CreateUser is not idempotent, so the service retries only what the contract
//! allows. Failures are classified from what the wire showed (HTTP status, headers, body, the I/O
//! error's type), never from message text. Owns no policy and never logs.

use std::future::Future;

use aws_config::{BehaviorVersion, SdkConfig, meta::region::RegionProviderChain};
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_chime::{
    Client,
    config::{Region, StalledStreamProtectionConfig},
    error::SdkError,
    operation::{
        RequestId,
        create_user::{CreateUserInput, CreateUserOutput},
    },
    types::User,
};
use aws_smithy_runtime_api::{
    client::{dns::ResolveDnsError, orchestrator::HttpResponse},
    http::Headers,
};
use aws_smithy_types::retry::RetryConfig;
use serde::Deserialize;

use crate::error::{ErrorResponse, UpstreamError};

/// Region used when neither `AWS_REGION` nor a profile names one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// A successful CreateUser.
#[derive(Debug)]
pub struct Created {
    /// What the SDK parsed.
    pub output: CreateUserOutput,
    /// The upstream's `x-amzn-RequestId`.
    pub request_id: Option<String>,
}

/// A user found by [`Upstream::find_user_by_email`].
#[derive(Debug, Clone)]
pub struct Found {
    /// The user, as `ListUsers` describes it.
    pub user: User,
    /// The `x-amzn-RequestId` of the `ListUsers` answer that held it.
    pub request_id: Option<String>,
}

/// The calls the gateway makes to a Chime-compatible endpoint.
pub trait Upstream: Send + Sync + 'static {
    /// Sends one CreateUser attempt; never retries.
    fn create_user(
        &self,
        input: CreateUserInput,
    ) -> impl Future<Output = Result<Created, UpstreamError>> + Send;

    /// The account's user whose primary email is `email`, ignoring case (`ListUsers` filtered by
    /// `user-email`, every page); `None` when there is none. Never retries.
    fn find_user_by_email(
        &self,
        account_id: &str,
        email: &str,
    ) -> impl Future<Output = Result<Option<Found>, UpstreamError>> + Send;
}

/// [`Upstream`] through the official AWS SDK, built once and shared by every call.
#[derive(Debug, Clone)]
pub struct SdkUpstream {
    client: Client,
}

impl SdkUpstream {
    /// Builds the client from a loaded AWS configuration, with the SDK's retries turned off, on
    /// the gateway's [`http_client`] (90 s idle connections, no connection limit).
    pub fn new(sdk_config: &SdkConfig) -> Self {
        let http = http_client(std::time::Duration::from_secs(90), None);
        Self::from_builder(aws_sdk_chime::config::Builder::from(sdk_config).http_client(http))
    }

    /// Builds the client from a service config builder (e.g. one with an endpoint override), with
    /// the SDK's retries turned off, and its stalled-stream watchdog too: bodies are a few hundred
    /// bytes and every attempt already has `--upstream-timeout`.
    pub fn from_builder(builder: aws_sdk_chime::config::Builder) -> Self {
        let config = builder
            .retry_config(RetryConfig::disabled())
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .build();
        Self {
            client: Client::from_conf(config),
        }
    }
}

/// Loads the standard AWS configuration (credential chain, `AWS_ENDPOINT_URL_CHIME`, ...), with
/// [`DEFAULT_REGION`] when none is configured.
pub async fn load_sdk_config() -> SdkConfig {
    let region = RegionProviderChain::default_provider().or_else(Region::from_static(DEFAULT_REGION));
    aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .load()
        .await
}

/// The configuration for a known endpoint and static key pair (the emulator): nothing is looked up
/// beyond the environment's retry and timeout settings.
pub async fn load_static_sdk_config(
    endpoint_url: &str,
    access_key_id: &str,
    secret_access_key: &str,
) -> SdkConfig {
    let credentials =
        aws_credential_types::Credentials::new(access_key_id, secret_access_key, None, None, "static");
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::from_static(DEFAULT_REGION))
        .endpoint_url(endpoint_url)
        .credentials_provider(credentials)
        .load()
        .await
}

/// The SDK's HTTPS client (rustls) on the SDK's connection pool: idle upstream connections are
/// kept for `pool_idle_timeout` so calls reuse them instead of paying a TCP and TLS handshake
/// each, and at most `max_connections` are open to the endpoint (`None`: no limit).
pub fn http_client(
    pool_idle_timeout: std::time::Duration,
    max_connections: Option<usize>,
) -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::{pool, tls};
    let mut builder = pool::ConnectionPool::builder().idle_timeout(pool_idle_timeout);
    builder.set_max_connections_per_host(max_connections);
    let pool = builder
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
        .build_https()
        .expect("a pool without declared partitions or interfaces always builds");
    let client = pool::Client::new(&pool).expect("a pool without partitions has the anonymous one");
    aws_smithy_runtime_api::client::http::SharedHttpClient::new(client)
}

/// The attempts the gateway may make for a retryable failure: `AWS_MAX_ATTEMPTS` or the profile's
/// `max_attempts`, as the SDKs document them.
pub fn max_attempts(sdk_config: &SdkConfig) -> u32 {
    sdk_config
        .retry_config()
        .map_or(RetryConfig::standard().max_attempts(), RetryConfig::max_attempts)
        .max(1)
}

impl Upstream for SdkUpstream {
    async fn create_user(&self, input: CreateUserInput) -> Result<Created, UpstreamError> {
        let sent = self
            .client
            .create_user()
            .set_account_id(input.account_id)
            .set_email(input.email)
            .set_username(input.username)
            .set_user_type(input.user_type)
            .send()
            .await;
        match sent {
            Ok(output) => Ok(Created {
                request_id: output.request_id().map(str::to_owned),
                output,
            }),
            Err(error) => Err(classify(error)),
        }
    }

    async fn find_user_by_email(
        &self,
        account_id: &str,
        email: &str,
    ) -> Result<Option<Found>, UpstreamError> {
        let mut next_token = None;
        loop {
            let page = self
                .client
                .list_users()
                .account_id(account_id)
                .user_email(email)
                .set_next_token(next_token)
                .send()
                .await
                .map_err(classify)?;
            let request_id = page.request_id().map(str::to_owned);
            if let Some(user) = page.users().iter().find(|u| same_email(u, email)) {
                let user = user.clone();
                return Ok(Some(Found { user, request_id }));
            }
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                _ => return Ok(None),
            }
        }
    }
}

/// True when the user's primary email is `email`, ignoring case (as Chime compares them).
pub fn same_email(user: &User, email: &str) -> bool {
    user.primary_email
        .as_deref()
        .is_some_and(|e| e.to_lowercase() == email.to_lowercase())
}

/// Reads an SDK failure of any operation into what the wire showed.
pub fn classify<E>(error: SdkError<E, HttpResponse>) -> UpstreamError
where
    E: std::error::Error + Send + Sync + 'static,
{
    if let Some(raw) = error.raw_response() {
        let status = raw.status().as_u16();
        if (200..300).contains(&status) {
            let request_id = header(raw.headers(), "x-amzn-RequestId");
            return UpstreamError::Unparseable {
                status,
                request_id,
                source: error.into(),
            };
        }
        let body = raw.body().bytes().unwrap_or_default();
        return UpstreamError::Response(error_response(status, raw.headers(), body));
    }
    if has_source(&error, |_: &CredentialsError| true) {
        return UpstreamError::NoCredentials(error.into());
    }
    match &error {
        SdkError::ConstructionFailure(_) => UpstreamError::Construction(error.into()),
        SdkError::TimeoutError(_) => UpstreamError::AttemptTimeout,
        _ if never_sent(&error) => UpstreamError::NotSent(error.into()),
        SdkError::DispatchFailure(d) if d.is_timeout() => UpstreamError::AttemptTimeout,
        _ => UpstreamError::ConnectionLost(error.into()),
    }
}

/// True when the failure happened while connecting (DNS, refused): nothing reached the upstream.
/// Only errors that cannot happen on an open connection count: a refused TCP connect is one, a
/// reset or a timeout is not (the request may have been sent).
fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    has_source(error, |_: &ResolveDnsError| true)
        || has_source(error, |e: &std::io::Error| {
            e.kind() == std::io::ErrorKind::ConnectionRefused
        })
}

fn has_source<T: std::error::Error + 'static>(
    error: &(dyn std::error::Error + 'static),
    test: impl Fn(&T) -> bool,
) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<T>().is_some_and(&test) {
            return true;
        }
        next = e.source();
    }
    false
}

/// The body of a restJson1 error: Chime's `{"Code","Message"}`, or a `__type`/`message` pair.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(rename = "Code")]
    code: Option<String>,
    #[serde(rename = "Message", alias = "message")]
    message: Option<String>,
    #[serde(rename = "__type")]
    error_type: Option<String>,
}

/// Reads an error response; the error type may come in `x-amzn-ErrorType` or in the body.
pub fn error_response(status: u16, headers: &Headers, body: &[u8]) -> ErrorResponse {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let error_type = header(headers, "x-amzn-ErrorType")
        .or(parsed.error_type)
        .and_then(|t| sanitize_error_type(&t));
    ErrorResponse {
        status,
        error_type,
        code: parsed.code.filter(|c| !c.is_empty()),
        message: parsed.message,
        request_id: header(headers, "x-amzn-RequestId"),
        retry_after: header(headers, "Retry-After")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|secs| std::time::Duration::from_secs(secs).min(crate::error::MAX_RETRY_AFTER)),
    }
}

/// `aws.protocols#ConflictException:http://...` -> `ConflictException`.
fn sanitize_error_type(raw: &str) -> Option<String> {
    let name = raw.split(':').next().unwrap_or(raw);
    let name = name.rsplit('#').next().unwrap_or(name).trim();
    (!name.is_empty()).then(|| name.to_owned())
}

fn header(headers: &Headers, name: &str) -> Option<String> {
    headers.get(name).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        let mut h = Headers::new();
        for (k, v) in pairs {
            h.insert(k.to_string(), v.to_string());
        }
        h
    }

    #[test]
    fn error_type_comes_from_the_header_without_its_namespace() {
        let h = headers(&[
            (
                "x-amzn-ErrorType",
                "ConflictException:http://internal.amazon.com/coral/com.amazonaws.chime/",
            ),
            ("x-amzn-RequestId", "req-1"),
        ]);
        let r = error_response(409, &h, br#"{"Code":"Conflict","Message":"taken"}"#);
        assert_eq!(r.error_type.as_deref(), Some("ConflictException"));
        assert_eq!(r.code.as_deref(), Some("Conflict"));
        assert_eq!(r.message.as_deref(), Some("taken"));
        assert_eq!(r.request_id.as_deref(), Some("req-1"));
    }

    #[test]
    fn error_type_comes_from_the_body_when_the_header_is_missing() {
        let r = error_response(
            409,
            &headers(&[]),
            br#"{"__type":"com.amazonaws.chime#ConflictException","message":"m"}"#,
        );
        assert_eq!(r.error_type.as_deref(), Some("ConflictException"));
        assert_eq!(r.message.as_deref(), Some("m"));
    }

    #[test]
    fn a_body_that_is_not_json_leaves_only_the_status() {
        let r = error_response(502, &headers(&[]), b"<html>bad gateway</html>");
        assert_eq!(
            r,
            ErrorResponse {
                status: 502,
                ..Default::default()
            }
        );
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let r = error_response(429, &headers(&[("Retry-After", "3")]), b"{}");
        assert_eq!(r.retry_after, Some(std::time::Duration::from_secs(3)));
        let dated = error_response(
            429,
            &headers(&[("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            b"{}",
        );
        assert_eq!(dated.retry_after, None);
    }
}
