//! Shared set-up for the end-to-end tests: the real gateway server (`server::run`) on a loopback
//! port, in front of the real emulator, through the real SDK.

#![allow(dead_code)]

pub mod process;

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use chime_gateway::{
    chime::{self, SdkUpstream, Upstream},
    emulator::{
        DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY, DEMO_ACCOUNT_ID, Emulator, EmulatorConfig, sigv4,
    },
    error::REQUEST_ID_KEY,
    pb::chime::v1::{
        CreateUserRequest, CreateUserResponse, UserType, chime_service_client::ChimeServiceClient,
    },
    server::{self, ServeOptions},
    service::{Backoff, CallPolicy, ChimeGateway},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// The policy the tests use unless they say otherwise: quick backoff, 3 attempts.
pub fn policy() -> CallPolicy {
    CallPolicy {
        upstream_timeout: Duration::from_secs(5),
        default_deadline: Duration::from_secs(15),
        max_attempts: 3,
        backoff: Backoff {
            base: Duration::from_millis(5),
            max: Duration::from_millis(20),
        },
        reconcile: true,
    }
}

/// A running gateway: its address, and how to stop it.
pub struct Gateway {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), server::ServeError>>,
}

impl Gateway {
    /// Starts the real server with any upstream.
    pub async fn start<U: Upstream>(
        upstream: U,
        policy: CallPolicy,
        max_concurrency: usize,
        grace: Duration,
    ) -> Self {
        Self::start_with(upstream, policy, max_concurrency, ServeOptions::with_grace(grace)).await
    }

    /// Starts the real server with any upstream and server options.
    pub async fn start_with<U: Upstream>(
        upstream: U,
        policy: CallPolicy,
        max_concurrency: usize,
        options: ServeOptions,
    ) -> Self {
        Self::serve(ChimeGateway::new(upstream, policy, max_concurrency), options).await
    }

    /// Serves a gateway built by the test.
    pub async fn serve<U: Upstream>(gateway: ChimeGateway<U>, options: ServeOptions) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        Self::serve_on(listener, gateway, options)
    }

    /// Serves a gateway built by the test on `listener` (the address of one stopped before it,
    /// for a restart).
    pub fn serve_on<U: Upstream>(
        listener: TcpListener,
        gateway: ChimeGateway<U>,
        options: ServeOptions,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, gateway, options, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Starts the real server in front of `emulator`, through the SDK, with its key pair.
    pub async fn in_front_of(emulator: &Emulator, policy: CallPolicy) -> Self {
        let (key, secret) = emulator.credentials();
        Self::at_endpoint(&emulator.endpoint_url(), key, secret, policy).await
    }

    /// Starts the real server in front of `emulator` with server options.
    pub async fn in_front_with(emulator: &Emulator, options: ServeOptions) -> Self {
        Self::start_with(upstream_for(emulator).await, policy(), 64, options).await
    }

    /// Starts the real server in front of any endpoint.
    pub async fn at_endpoint(url: &str, key: &str, secret: &str, policy: CallPolicy) -> Self {
        let sdk_config = chime::load_static_sdk_config(url, key, secret).await;
        Self::start(SdkUpstream::new(&sdk_config), policy, 64, Duration::from_secs(5)).await
    }

    /// A client connected to it.
    pub async fn client(&self) -> ChimeServiceClient<Channel> {
        ChimeServiceClient::new(self.channel().await)
    }

    /// A channel to it, for the health and reflection clients.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Begins shutdown, as SIGTERM does.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down, as SIGTERM does, and waits for the server to end.
    pub async fn stop(mut self) {
        self.shutdown();
        self.task.await.unwrap().unwrap();
    }
}

/// `endpoint` dialled over the Unix socket at `path`, as grpc-go or grpcio dial `unix:/path`.
pub async fn unix_channel(endpoint: tonic::transport::Endpoint, path: &std::path::Path) -> Channel {
    let path = path.to_owned();
    endpoint
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap()
}

/// An emulator with the default keys and accounts.
pub async fn emulator() -> Emulator {
    Emulator::start(EmulatorConfig::default()).await.unwrap()
}

/// The emulator and a gateway in front of it, with the test policy.
pub async fn stack() -> (Emulator, Gateway) {
    let emulator = emulator().await;
    let gateway = Gateway::in_front_of(&emulator, policy()).await;
    (emulator, gateway)
}

/// A request in the demo account.
pub fn request(email: Option<&str>, user_type: UserType) -> CreateUserRequest {
    CreateUserRequest {
        account_id: DEMO_ACCOUNT_ID.to_owned(),
        email: email.map(str::to_owned),
        username: None,
        user_type: user_type as i32,
        request_id: String::new(),
    }
}

/// Calls CreateUser and returns the response with its metadata.
pub async fn create(
    gateway: &Gateway,
    request: CreateUserRequest,
) -> Result<tonic::Response<CreateUserResponse>, tonic::Status> {
    gateway.client().await.create_user(request).await
}

/// The `x-amzn-requestid` of a response or status metadata.
pub fn request_id(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata
        .get(REQUEST_ID_KEY)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Shorthands for test policies.
pub struct CallPolicyExt;

impl CallPolicyExt {
    /// The test policy with a given attempt limit.
    pub fn attempts(max_attempts: u32) -> CallPolicy {
        CallPolicy {
            max_attempts,
            ..policy()
        }
    }
}

/// The SDK upstream pointed at `emulator`, with its key pair.
pub async fn upstream_for(emulator: &Emulator) -> SdkUpstream {
    let (key, secret) = emulator.credentials();
    let sdk_config = chime::load_static_sdk_config(&emulator.endpoint_url(), key, secret).await;
    SdkUpstream::new(&sdk_config)
}

/// An HTTP answer read off the wire.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: serde_json::Value,
}

/// Sends one raw HTTP request to an emulator at `url` (`path` with its query), SigV4-signed with
/// the default keys when `signed`, as an SDK would.
pub async fn send_raw(url: &str, method: http::Method, path: &str, body: &str, signed: bool) -> Answer {
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("{url}{path}"))
        .header("content-type", "application/json")
        .header("host", url.trim_start_matches("http://"))
        .body(body.as_bytes().to_vec())
        .unwrap();
    if signed {
        let keys = (DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY);
        sigv4::sign(&mut request, keys, ("us-east-1", "chime"), SystemTime::now()).unwrap();
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client
        .request(request.map(|b| Full::new(Bytes::from(b))))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

/// A header of an answer, or "".
pub fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}
