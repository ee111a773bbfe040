//! Runtime configuration: every setting is a flag and a `CHIME_GATEWAY_*` environment variable.
//!
//! Owns parsing and checking only; it must not bind sockets or read AWS settings (the standard
//! AWS variables are left to `aws-config`, which documents them).

use std::{fmt, net::SocketAddr, num::NonZeroUsize, path::PathBuf, str::FromStr, time::Duration};

use clap::{Parser, ValueEnum, builder::BoolishValueParser};

use crate::{
    retry::{BudgetConfig, SendRate},
    server::ConnectionLimits,
};

/// Env var for `--listen`.
pub const ENV_LISTEN: &str = "CHIME_GATEWAY_LISTEN";
/// Env var for `--listen-mode`.
pub const ENV_LISTEN_MODE: &str = "CHIME_GATEWAY_LISTEN_MODE";
/// Env var for `--health-listen`.
pub const ENV_HEALTH_LISTEN: &str = "CHIME_GATEWAY_HEALTH_LISTEN";
/// Env var for `--worker-threads`.
pub const ENV_WORKER_THREADS: &str = "CHIME_GATEWAY_WORKER_THREADS";
/// Env var for `--metrics-listen`.
pub const ENV_METRICS_LISTEN: &str = "CHIME_GATEWAY_METRICS_LISTEN";
/// Env var for `--http2-keepalive-interval`.
pub const ENV_HTTP2_KEEPALIVE_INTERVAL: &str = "CHIME_GATEWAY_HTTP2_KEEPALIVE_INTERVAL";
/// Env var for `--http2-keepalive-timeout`.
pub const ENV_HTTP2_KEEPALIVE_TIMEOUT: &str = "CHIME_GATEWAY_HTTP2_KEEPALIVE_TIMEOUT";
/// Env var for `--http2-max-concurrent-streams`.
pub const ENV_HTTP2_MAX_CONCURRENT_STREAMS: &str = "CHIME_GATEWAY_HTTP2_MAX_CONCURRENT_STREAMS";
/// Env var for `--http2-max-header-list-size`.
pub const ENV_HTTP2_MAX_HEADER_LIST_SIZE: &str = "CHIME_GATEWAY_HTTP2_MAX_HEADER_LIST_SIZE";
/// Env var for `--handshake-timeout`.
pub const ENV_HANDSHAKE_TIMEOUT: &str = "CHIME_GATEWAY_HANDSHAKE_TIMEOUT";
/// Env var for `--max-connection-age`.
pub const ENV_MAX_CONNECTION_AGE: &str = "CHIME_GATEWAY_MAX_CONNECTION_AGE";
/// Env var for `--max-message-size`.
pub const ENV_MAX_MESSAGE_SIZE: &str = "CHIME_GATEWAY_MAX_MESSAGE_SIZE";
/// Env var for `--upstream-pool-idle-timeout`.
pub const ENV_UPSTREAM_POOL_IDLE_TIMEOUT: &str = "CHIME_GATEWAY_UPSTREAM_POOL_IDLE_TIMEOUT";
/// Env var for `--upstream-max-connections`.
pub const ENV_UPSTREAM_MAX_CONNECTIONS: &str = "CHIME_GATEWAY_UPSTREAM_MAX_CONNECTIONS";
/// Env var for `--tls-cert`.
pub const ENV_TLS_CERT: &str = "CHIME_GATEWAY_TLS_CERT";
/// Env var for `--tls-key`.
pub const ENV_TLS_KEY: &str = "CHIME_GATEWAY_TLS_KEY";
/// Env var for `--tls-client-ca`.
pub const ENV_TLS_CLIENT_CA: &str = "CHIME_GATEWAY_TLS_CLIENT_CA";
/// Env var for `--upstream-timeout`.
pub const ENV_UPSTREAM_TIMEOUT: &str = "CHIME_GATEWAY_UPSTREAM_TIMEOUT";
/// Env var for `--default-deadline`.
pub const ENV_DEFAULT_DEADLINE: &str = "CHIME_GATEWAY_DEFAULT_DEADLINE";
/// Env var for `--max-concurrency`.
pub const ENV_MAX_CONCURRENCY: &str = "CHIME_GATEWAY_MAX_CONCURRENCY";
/// Env var for `--shutdown-grace`.
pub const ENV_SHUTDOWN_GRACE: &str = "CHIME_GATEWAY_SHUTDOWN_GRACE";
/// Env var for `--emulate`.
pub const ENV_EMULATE: &str = "CHIME_GATEWAY_EMULATE";
/// Env var for `--idempotency-ttl`.
pub const ENV_IDEMPOTENCY_TTL: &str = "CHIME_GATEWAY_IDEMPOTENCY_TTL";
/// Env var for `--idempotency-capacity`.
pub const ENV_IDEMPOTENCY_CAPACITY: &str = "CHIME_GATEWAY_IDEMPOTENCY_CAPACITY";
/// Env var for `--reconcile`.
pub const ENV_RECONCILE: &str = "CHIME_GATEWAY_RECONCILE";
/// Env var for `--state-dir`.
pub const ENV_STATE_DIR: &str = "CHIME_GATEWAY_STATE_DIR";
/// Env var for `--retry-budget`.
pub const ENV_RETRY_BUDGET: &str = "CHIME_GATEWAY_RETRY_BUDGET";
/// Env var for `--adaptive-throttle`.
pub const ENV_ADAPTIVE_THROTTLE: &str = "CHIME_GATEWAY_ADAPTIVE_THROTTLE";
/// Env var of the retired `--retry-budget-tokens`.
pub const ENV_RETRY_BUDGET_TOKENS: &str = "CHIME_GATEWAY_RETRY_BUDGET_TOKENS";
/// Env var of the retired `--retry-budget-retry-cost`.
pub const ENV_RETRY_BUDGET_RETRY_COST: &str = "CHIME_GATEWAY_RETRY_BUDGET_RETRY_COST";
/// Env var of the retired `--retry-budget-lookup-cost`.
pub const ENV_RETRY_BUDGET_LOOKUP_COST: &str = "CHIME_GATEWAY_RETRY_BUDGET_LOOKUP_COST";
/// Env var of the retired `--retry-budget-refill`.
pub const ENV_RETRY_BUDGET_REFILL: &str = "CHIME_GATEWAY_RETRY_BUDGET_REFILL";
/// Env var of the retired `--upstream-rate`.
pub const ENV_UPSTREAM_RATE: &str = "CHIME_GATEWAY_UPSTREAM_RATE";
/// Env var for `--log-format`.
pub const ENV_LOG_FORMAT: &str = "CHIME_GATEWAY_LOG_FORMAT";

/// gRPC gateway for the Amazon Chime CreateUser operation.
///
/// Serves chime.v1.ChimeService/CreateUser, grpc.health.v1 and server reflection on one port, and
/// calls Chime through the AWS SDK. AWS settings (credentials, AWS_REGION, AWS_MAX_ATTEMPTS,
/// AWS_ENDPOINT_URL_CHIME, ...) are read the way the AWS SDKs document them.
#[derive(Debug, Clone, Parser)]
#[command(name = "chime-gateway", version)]
pub struct Config {
    /// Address the gRPC API, health and reflection listen on: HOST:PORT, or unix:/path/to/socket
    /// (a Unix domain socket, removed on a clean shutdown).
    #[arg(long, env = ENV_LISTEN, default_value = "127.0.0.1:50051")]
    pub listen: ListenAddr,

    /// File mode of the --listen Unix socket, in octal (who may connect).
    #[arg(long, env = ENV_LISTEN_MODE, default_value = "0660", value_parser = file_mode)]
    pub listen_mode: u32,

    /// Address of a second port serving grpc.health.v1 only (for kubelet probes), so that the API
    /// itself can stay on loopback or a Unix socket. Unset: health is served on --listen only.
    #[arg(long, env = ENV_HEALTH_LISTEN)]
    pub health_listen: Option<SocketAddr>,

    /// Runtime worker threads (1: a single-threaded runtime). Unset: the CPUs this process may
    /// use (affinity and cgroup quota), at most 2.
    #[arg(long, env = ENV_WORKER_THREADS, value_parser = count)]
    pub worker_threads: Option<NonZeroUsize>,

    /// Address the Prometheus metrics (`/metrics`) listen on.
    #[arg(long, env = ENV_METRICS_LISTEN, default_value = "127.0.0.1:9464")]
    pub metrics_listen: SocketAddr,

    /// Time limit of each upstream attempt (humantime: 500ms, 5s).
    #[arg(long, env = ENV_UPSTREAM_TIMEOUT, default_value = "5s", value_parser = positive_duration)]
    pub upstream_timeout: Duration,

    /// Deadline of a call whose caller set none (humantime).
    #[arg(long, env = ENV_DEFAULT_DEADLINE, default_value = "15s", value_parser = positive_duration)]
    pub default_deadline: Duration,

    /// Calls served at once; calls beyond it are refused at once with UNAVAILABLE and RetryInfo.
    #[arg(long, env = ENV_MAX_CONCURRENCY, default_value = "1024", value_parser = count)]
    pub max_concurrency: NonZeroUsize,

    /// How long in-flight calls may run after SIGTERM or SIGINT before they are cancelled.
    #[arg(long, env = ENV_SHUTDOWN_GRACE, default_value = "20s", value_parser = bounded_duration)]
    pub shutdown_grace: Duration,

    /// Start the built-in Chime emulator on a loopback port and send every call to it.
    #[arg(long, env = ENV_EMULATE, value_parser = BoolishValueParser::new(), default_value = "false",
          num_args = 0..=1, default_missing_value = "true")]
    pub emulate: bool,

    /// Interval of HTTP/2 PINGs to callers, to find dead connections.
    #[arg(long, env = ENV_HTTP2_KEEPALIVE_INTERVAL, default_value = "30s", value_parser = positive_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long a PING may go unanswered before the connection is closed.
    #[arg(long, env = ENV_HTTP2_KEEPALIVE_TIMEOUT, default_value = "10s", value_parser = positive_duration)]
    pub http2_keepalive_timeout: Duration,

    /// Streams one caller connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS);
    /// a stream over it is refused with REFUSED_STREAM, which gRPC clients retry.
    #[arg(long, env = ENV_HTTP2_MAX_CONCURRENT_STREAMS, default_value = "256",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub http2_max_concurrent_streams: u32,

    /// Largest request header list, in bytes counted as HTTP/2 counts them (name + value + 32 per
    /// field; SETTINGS_MAX_HEADER_LIST_SIZE). A larger request is refused; one four times larger
    /// closes its connection.
    #[arg(long, env = ENV_HTTP2_MAX_HEADER_LIST_SIZE, default_value = "16384",
          value_parser = clap::value_parser!(u32).range(1024..=1_048_576))]
    pub http2_max_header_list_size: u32,

    /// How long a new caller connection gets to finish its TLS handshake (if any) and send the
    /// HTTP/2 preface, before it is closed.
    #[arg(long, env = ENV_HANDSHAKE_TIMEOUT, default_value = "10s", value_parser = positive_duration)]
    pub handshake_timeout: Duration,

    /// Close caller connections gracefully after this age (unset: never), to rebalance.
    #[arg(long, env = ENV_MAX_CONNECTION_AGE, value_parser = positive_duration)]
    pub max_connection_age: Option<Duration>,

    /// Largest request or response message, in bytes.
    #[arg(long, env = ENV_MAX_MESSAGE_SIZE, default_value = "65536",
          value_parser = clap::value_parser!(u32).range(1024..=MAX_MESSAGE_SIZE))]
    pub max_message_size: u32,

    /// How long an idle upstream connection is kept in the pool for reuse.
    #[arg(long, env = ENV_UPSTREAM_POOL_IDLE_TIMEOUT, default_value = "90s", value_parser = positive_duration)]
    pub upstream_pool_idle_timeout: Duration,

    /// Most upstream connections, and so upstream attempts at once; calls beyond wait for one
    /// within their deadline (DEADLINE_EXCEEDED, UPSTREAM_BUSY if it passes first).
    #[arg(long, env = ENV_UPSTREAM_MAX_CONNECTIONS, default_value = "256", value_parser = count)]
    pub upstream_max_connections: NonZeroUsize,

    /// How long the outcome of a request_id is kept: repeats within it get the same answer.
    #[arg(long, env = ENV_IDEMPOTENCY_TTL, default_value = "15m", value_parser = positive_duration)]
    pub idempotency_ttl: Duration,

    /// Most request_id outcomes kept (an answer over 1 KiB counts once per KiB); the oldest go
    /// first. The default adds at most 12 MiB when full.
    #[arg(long, env = ENV_IDEMPOTENCY_CAPACITY, default_value = "10000",
          value_parser = clap::value_parser!(u64).range(1..=MAX_IDEMPOTENCY_CAPACITY))]
    pub idempotency_capacity: u64,

    /// When an attempt's outcome is unknown (timeout, lost connection, 500/502/504), look the
    /// user up by email (ListUsers) instead of answering the error (needs chime:ListUsers).
    #[arg(long, env = ENV_RECONCILE, value_parser = BoolishValueParser::new(), default_value = "true",
          num_args = 0..=1, default_missing_value = "true")]
    pub reconcile: bool,

    /// Directory where request ids in flight are recorded before each call's first attempt, so
    /// that a restarted gateway (after a crash or SIGKILL) still settles their retries' conflicts
    /// by a lookup. Unset: memory only. In Kubernetes, an emptyDir (it outlives container restarts).
    #[arg(long, env = ENV_STATE_DIR)]
    pub state_dir: Option<PathBuf>,

    /// The retry budget: each create that succeeds at its first attempt earns this share of a
    /// request for retries and lookups after unknown outcomes (a retry that succeeds gets its
    /// own back); the budget holds at most this share of the last 5 s of successes, and never
    /// less than a reserve of 2 requests (where a process starts). Empty: calls end with the
    /// error they have (ErrorInfo retry_budget: exhausted). `off`: unbounded.
    #[arg(long, env = ENV_RETRY_BUDGET, default_value = "0.2")]
    pub retry_budget: BudgetRatio,

    /// After Chime's 429s, refuse a share of each operation's requests, so that sends settle at
    /// 1.15 times what Chime accepts (client-side adaptive throttling). A refused create is
    /// answered at once RESOURCE_EXHAUSTED (ADAPTIVE_THROTTLE). `on` or `off`.
    #[arg(long, env = ENV_ADAPTIVE_THROTTLE, default_value = "on")]
    pub adaptive_throttle: SendRate,

    /// Retired: the retry budget is a share of successes (--retry-budget).
    #[arg(long, env = ENV_RETRY_BUDGET_TOKENS, hide = true, value_parser = retired_budget)]
    pub retry_budget_tokens: Option<Retired>,

    /// Retired: every retry and lookup costs one request (--retry-budget).
    #[arg(long, env = ENV_RETRY_BUDGET_RETRY_COST, hide = true, value_parser = retired_budget)]
    pub retry_budget_retry_cost: Option<Retired>,

    /// Retired: every retry and lookup costs one request (--retry-budget).
    #[arg(long, env = ENV_RETRY_BUDGET_LOOKUP_COST, hide = true, value_parser = retired_budget)]
    pub retry_budget_lookup_cost: Option<Retired>,

    /// Retired: a success earns the --retry-budget share.
    #[arg(long, env = ENV_RETRY_BUDGET_REFILL, hide = true, value_parser = retired_budget)]
    pub retry_budget_refill: Option<Retired>,

    /// Retired: sends are not paced at a rate any more (--adaptive-throttle).
    #[arg(long, env = ENV_UPSTREAM_RATE, hide = true, value_parser = retired_rate)]
    pub upstream_rate: Option<Retired>,

    /// PEM certificate chain: serve TLS instead of plaintext (needs --tls-key).
    #[arg(long, env = ENV_TLS_CERT, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = ENV_TLS_KEY, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: require and verify a client certificate signed by it (mTLS).
    #[arg(long, env = ENV_TLS_CLIENT_CA, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Log line format.
    #[arg(long, env = ENV_LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--retry-budget`: a share of a request (0.01 to 1), or `off`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetRatio(pub Option<f64>);

impl FromStr for BudgetRatio {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self(None)),
            n => match n.parse::<f64>() {
                Ok(ratio) if (0.01..=1.0).contains(&ratio) => Ok(Self(Some(ratio))),
                _ => Err(format!("{s:?} is neither a share from 0.01 to 1 nor `off`")),
            },
        }
    }
}

/// A retired setting's value: never parsed, so a deployment that still sets one learns at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retired;

fn retired_budget(_: &str) -> Result<Retired, String> {
    Err(
        "retired: the retry budget is a share of recent successes now, set by --retry-budget \
         (docs/configuration.md)"
            .to_owned(),
    )
}

fn retired_rate(_: &str) -> Result<Retired, String> {
    Err(
        "retired: sends follow the adaptive throttle now, --adaptive-throttle on or off \
         (docs/configuration.md)"
            .to_owned(),
    )
}

impl Config {
    /// What one caller connection may cost.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_concurrent_streams: self.http2_max_concurrent_streams,
            max_header_list_size: self.http2_max_header_list_size,
            handshake_timeout: self.handshake_timeout,
        }
    }

    /// The retry budget's knob; `None` when `--retry-budget off`.
    pub fn retry_budget(&self) -> Option<BudgetConfig> {
        self.retry_budget.0.map(|ratio| BudgetConfig {
            ratio,
            ..BudgetConfig::default()
        })
    }
}

/// Where the API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix domain socket at this path.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("unix:") {
            // unix:/abs, unix:relative, and the URI form unix:///abs.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/var/run/chime-gateway/grpc.sock".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse().map(ListenAddr::Tcp).map_err(|_| {
            format!("{s:?} is neither HOST:PORT (e.g. 127.0.0.1:50051) nor unix:/path/to/socket")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Config {
    /// Refuses two listeners on one TCP address (a port of 0 is never a clash); the setting named
    /// is the later one.
    pub fn check_addresses(&self) -> Result<(), String> {
        let mut seen: Vec<(&str, SocketAddr)> = Vec::new();
        let api = match &self.listen {
            ListenAddr::Tcp(addr) => Some(*addr),
            ListenAddr::Unix(_) => None,
        };
        let ports = [
            ("--listen", api),
            ("--metrics-listen", Some(self.metrics_listen)),
            ("--health-listen", self.health_listen),
        ];
        for (setting, addr) in ports {
            let Some(addr) = addr.filter(|a| a.port() != 0) else {
                continue;
            };
            if let Some((other, _)) = seen.iter().find(|(_, a)| *a == addr) {
                return Err(format!("{setting} {addr} is also the address of {other}"));
            }
            seen.push((setting, addr));
        }
        Ok(())
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The longest duration any setting takes: a deadline or TTL added to a clock reading can never
/// overflow it, and no setting means "forever" by accident.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most calls, connections or threads a count setting takes: far above what one sidecar
/// serves, and below what the runtime's semaphores and maps accept.
pub const MAX_COUNT: usize = 1 << 20;
/// The largest message size: four times gRPC's usual 4 MiB.
pub const MAX_MESSAGE_SIZE: i64 = 16 << 20;
/// The most request-id outcomes kept: a full memory stays within what one process can hold
/// (docs/configuration.md, "Memory").
pub const MAX_IDEMPOTENCY_CAPACITY: u64 = 1_000_000;

fn positive_duration(value: &str) -> Result<Duration, String> {
    match bounded_duration(value)? {
        d if d.is_zero() => Err("must be greater than zero".to_owned()),
        d => Ok(d),
    }
}

/// A humantime duration of at most [`MAX_DURATION`].
fn bounded_duration(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(d) if d > MAX_DURATION => Err(format!(
            "must be at most {}",
            humantime::format_duration(MAX_DURATION)
        )),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// A count from 1 to [`MAX_COUNT`].
fn count(value: &str) -> Result<NonZeroUsize, String> {
    match value.parse::<NonZeroUsize>() {
        Ok(n) if n.get() <= MAX_COUNT => Ok(n),
        Ok(_) => Err(format!("must be at most {MAX_COUNT}")),
        Err(e) => Err(e.to_string()),
    }
}

fn file_mode(value: &str) -> Result<u32, String> {
    match u32::from_str_radix(value.trim_start_matches("0o"), 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err("must be an octal file mode from 0000 to 0777, e.g. 0660".to_owned()),
    }
}

/// The one line printed for a configuration error: clap's first line, without its usage block.
pub fn one_line(error: &clap::Error) -> String {
    let rendered = error.to_string();
    rendered
        .lines()
        .next()
        .unwrap_or("invalid configuration")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("chime-gateway").chain(args.iter().copied()))
    }

    #[test]
    fn every_duration_and_count_is_bounded_and_the_bound_itself_is_taken() {
        let week = "7days";
        let over = "7days 1s";
        for flag in [
            "--upstream-timeout",
            "--default-deadline",
            "--shutdown-grace",
            "--http2-keepalive-interval",
            "--http2-keepalive-timeout",
            "--max-connection-age",
            "--upstream-pool-idle-timeout",
            "--idempotency-ttl",
        ] {
            assert!(parse(&[flag, week]).is_ok(), "{flag} {week}");
            let error = parse(&[flag, over]).unwrap_err().to_string();
            assert!(error.contains("must be at most 7days"), "{flag}: {error}");
            assert!(
                parse(&[flag, "1000000000y"]).is_err(),
                "{flag}: far past any clock"
            );
        }
        for flag in [
            "--max-concurrency",
            "--upstream-max-connections",
            "--worker-threads",
        ] {
            assert!(parse(&[flag, &MAX_COUNT.to_string()]).is_ok(), "{flag}");
            let error = parse(&[flag, &(MAX_COUNT + 1).to_string()])
                .unwrap_err()
                .to_string();
            assert!(error.contains("must be at most"), "{flag}: {error}");
            assert!(parse(&[flag, "0"]).is_err(), "{flag} 0");
        }
        let capacity = MAX_IDEMPOTENCY_CAPACITY.to_string();
        assert!(parse(&["--idempotency-capacity", &capacity]).is_ok());
        for over in [MAX_IDEMPOTENCY_CAPACITY + 1, u64::MAX] {
            assert!(
                parse(&["--idempotency-capacity", &over.to_string()]).is_err(),
                "{over}"
            );
        }
        assert!(parse(&["--max-message-size", &MAX_MESSAGE_SIZE.to_string()]).is_ok());
        assert!(parse(&["--max-message-size", &(MAX_MESSAGE_SIZE + 1).to_string()]).is_err());
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen, ListenAddr::Tcp("127.0.0.1:50051".parse().unwrap()));
        assert_eq!(c.listen_mode, 0o660);
        assert_eq!(c.health_listen, None);
        assert_eq!(c.worker_threads, None);
        assert_eq!(c.upstream_timeout, Duration::from_secs(5));
        assert_eq!(c.default_deadline, Duration::from_secs(15));
        assert_eq!(c.shutdown_grace, Duration::from_secs(20));
        assert!(!c.emulate);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.max_concurrency.get(), 1024);
        assert_eq!(c.upstream_max_connections.get(), 256);
        assert_eq!(c.idempotency_ttl, Duration::from_secs(15 * 60));
        assert_eq!(c.idempotency_capacity, 10_000);
        assert!(c.reconcile);
        assert_eq!(c.retry_budget(), Some(BudgetConfig::default()));
        assert_eq!(c.adaptive_throttle, SendRate::Adaptive);
        assert_eq!(c.state_dir, None);
        let c = parse(&["--state-dir", "/var/lib/chime-gateway"]).unwrap();
        assert_eq!(c.state_dir, Some(PathBuf::from("/var/lib/chime-gateway")));
    }

    #[test]
    fn connection_limits_are_read_and_default_to_the_servers() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.connection_limits(), ConnectionLimits::default());
        let c = parse(&[
            "--http2-max-concurrent-streams",
            "10",
            "--http2-max-header-list-size",
            "8192",
            "--handshake-timeout",
            "500ms",
        ])
        .unwrap();
        assert_eq!(
            c.connection_limits(),
            ConnectionLimits {
                max_concurrent_streams: 10,
                max_header_list_size: 8192,
                handshake_timeout: Duration::from_millis(500),
            }
        );
        for bad in [
            &["--http2-max-concurrent-streams", "0"][..],
            &["--http2-max-header-list-size", "100"],
            &["--http2-max-header-list-size", "2000000"],
            &["--handshake-timeout", "0s"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_retry_budget_and_the_throttle_are_read() {
        let c = parse(&["--retry-budget", "0.25", "--adaptive-throttle", "off"]).unwrap();
        let expected = BudgetConfig {
            ratio: 0.25,
            ..BudgetConfig::default()
        };
        assert_eq!(c.retry_budget(), Some(expected));
        assert_eq!(c.adaptive_throttle, SendRate::Off);
        let off = parse(&["--retry-budget", "off", "--adaptive-throttle", "on"]).unwrap();
        assert_eq!(off.retry_budget(), None);
        assert_eq!(off.adaptive_throttle, SendRate::Adaptive);
    }

    #[test]
    fn a_retired_protection_setting_is_refused_with_where_to_look() {
        for (args, instead) in [
            (&["--retry-budget-tokens", "100"][..], "--retry-budget"),
            (&["--retry-budget-retry-cost", "5"], "--retry-budget"),
            (&["--retry-budget-lookup-cost", "10"], "--retry-budget"),
            (&["--retry-budget-refill", "1"], "--retry-budget"),
            (&["--upstream-rate", "adaptive"], "--adaptive-throttle"),
        ] {
            let line = one_line(&parse(args).unwrap_err());
            assert!(
                line.contains("retired") && line.contains(instead),
                "{args:?}: {line}"
            );
        }
    }

    #[test]
    fn request_id_settings_are_read() {
        let c = parse(&[
            "--idempotency-ttl",
            "90s",
            "--idempotency-capacity",
            "7",
            "--reconcile",
            "false",
        ])
        .unwrap();
        assert_eq!(c.idempotency_ttl, Duration::from_secs(90));
        assert_eq!(c.idempotency_capacity, 7);
        assert!(!c.reconcile);
        assert!(parse(&["--reconcile"]).unwrap().reconcile);
        assert!(!parse(&["--reconcile=off"]).unwrap().reconcile);
    }

    #[test]
    fn listen_takes_a_tcp_address_or_a_unix_socket_path() {
        let unix = |arg: &str| parse(&["--listen", arg]).unwrap().listen;
        assert_eq!(unix("unix:/run/gw.sock"), ListenAddr::Unix("/run/gw.sock".into()));
        assert_eq!(
            unix("unix:///run/gw.sock"),
            ListenAddr::Unix("/run/gw.sock".into())
        );
        assert_eq!(unix("unix:gw.sock"), ListenAddr::Unix("gw.sock".into()));
        assert_eq!(unix("[::1]:9"), ListenAddr::Tcp("[::1]:9".parse().unwrap()));
        assert_eq!(
            ListenAddr::Unix("/run/gw.sock".into()).to_string(),
            "unix:/run/gw.sock"
        );
        assert_eq!(parse(&["--listen-mode", "600"]).unwrap().listen_mode, 0o600);
        assert_eq!(
            parse(&["--worker-threads", "3"])
                .unwrap()
                .worker_threads
                .unwrap()
                .get(),
            3
        );
    }

    #[test]
    fn two_listeners_on_one_address_are_refused_naming_the_setting() {
        let c = parse(&["--health-listen", "127.0.0.1:9464"]).unwrap();
        let line = c.check_addresses().unwrap_err();
        assert!(line.starts_with("--health-listen 127.0.0.1:9464"), "{line}");
        assert!(line.ends_with("--metrics-listen"), "{line}");
        let c = parse(&["--metrics-listen", "127.0.0.1:50051"]).unwrap();
        assert!(c.check_addresses().unwrap_err().starts_with("--metrics-listen"));
        let zeros = ["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];
        assert_eq!(parse(&zeros).unwrap().check_addresses(), Ok(()));
        let unix = ["--listen", "unix:/tmp/x.sock", "--health-listen", "0.0.0.0:50051"];
        assert_eq!(parse(&unix).unwrap().check_addresses(), Ok(()));
    }

    #[test]
    fn durations_use_humantime() {
        let c = parse(&["--upstream-timeout", "500ms", "--default-deadline", "1m"]).unwrap();
        assert_eq!(c.upstream_timeout, Duration::from_millis(500));
        assert_eq!(c.default_deadline, Duration::from_secs(60));
    }

    #[test]
    fn emulate_is_a_flag_that_also_takes_a_value() {
        assert!(parse(&["--emulate"]).unwrap().emulate);
        assert!(!parse(&["--emulate=false"]).unwrap().emulate);
        assert!(parse(&["--emulate=1"]).unwrap().emulate);
    }

    #[test]
    fn invalid_values_give_one_clear_line() {
        for args in [
            &["--upstream-timeout", "soon"][..],
            &["--upstream-timeout", "0s"],
            &["--listen", "nowhere"],
            &["--max-concurrency", "0"],
            &["--upstream-max-connections", "0"],
            &["--log-format", "xml"],
            &["--no-such-flag"],
            &["--tls-cert", "cert.pem"],
            &["--tls-client-ca", "ca.pem"],
            &["--max-message-size", "10"],
            &["--idempotency-ttl", "0s"],
            &["--idempotency-ttl", "forever"],
            &["--idempotency-capacity", "0"],
            &["--idempotency-capacity", "many"],
            &["--reconcile", "maybe"],
            &["--listen", "unix:"],
            &["--listen-mode", "999"],
            &["--listen-mode", "rw"],
            &["--health-listen", "nowhere"],
            &["--worker-threads", "0"],
            &["--worker-threads", "two"],
            &["--retry-budget", "many"],
            &["--retry-budget", "0"],
            &["--retry-budget", "2"],
            &["--retry-budget", "NaN"],
            &["--adaptive-throttle", "adaptive-ish"],
            &["--adaptive-throttle", "20"],
        ] {
            let err = parse(args).unwrap_err();
            let line = one_line(&err);
            assert!(line.starts_with("error: "), "{args:?}: {line}");
            assert!(!line.contains('\n'));
        }
    }
}
