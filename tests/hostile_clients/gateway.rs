//! The gateway under attack: the `chime-gateway` binary with `--emulate`, on one listener, its
//! memory read from `/proc`, and an honest caller on a connection of its own.

use std::{path::PathBuf, time::Duration};

use chime_gateway::{
    config::ENV_HANDSHAKE_TIMEOUT,
    emulator::DEMO_ACCOUNT_ID,
    pb::chime::v1::{CreateUserRequest, UserType, chime_service_client::ChimeServiceClient},
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::{
    common::process::{Started, start},
    wire::Target,
};

/// Which listener the gateway serves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Tcp,
    Unix,
    Tls,
    /// TLS on a Unix socket.
    UnixTls,
}

/// How long a connection gets to begin, in these tests.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Gateway {
    /// The process (killed when dropped).
    _started: Started,
    pub target: Target,
    pub pid: u32,
    /// Where the socket and the TLS files live.
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Gateway {
    /// Starts a fresh gateway on `listener`, with `args` added.
    pub async fn start(listener: Listener, name: &str, args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "chime-hostile-{}-{name}-{listener:?}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("grpc.sock");
        let listen = match listener {
            Listener::Unix | Listener::UnixTls => format!("unix:{}", socket.display()),
            _ => "127.0.0.1:0".to_owned(),
        };
        let mut all = vec![
            "--emulate",
            "--listen",
            &listen,
            "--metrics-listen",
            "127.0.0.1:0",
        ];
        let mut ca = String::new();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        let (cert_arg, key_arg) = (cert_path.display().to_string(), key_path.display().to_string());
        if matches!(listener, Listener::Tls | Listener::UnixTls) {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            ca = cert.pem();
            all.extend(["--tls-cert", &cert_arg, "--tls-key", &key_arg]);
        }
        all.extend_from_slice(args);
        // By the environment, which a gateway without the setting ignores: the same tests
        // measure a build from before the limits.
        let timeout = humantime::format_duration(HANDSHAKE_TIMEOUT).to_string();
        let started = start(&all, &[(ENV_HANDSHAKE_TIMEOUT, &timeout)]).await;
        let pid = started.running.child.id().unwrap();
        let target = match listener {
            Listener::Tcp => Target::Tcp(started.api.clone()),
            Listener::Unix => Target::Unix(socket),
            Listener::Tls => Target::Tls(started.api.clone(), ca),
            Listener::UnixTls => Target::UnixTls(socket, ca),
        };
        Self {
            _started: started,
            target,
            pid,
            _dir: TempDir(dir),
        }
    }

    /// A gRPC channel as an honest client opens it (over a socket, as grpc-go dials `unix:`).
    pub async fn channel(&self) -> Channel {
        match &self.target {
            Target::Tcp(addr) => Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
            Target::Unix(path) => unix_endpoint(Endpoint::from_static("http://localhost"), path).await,
            Target::UnixTls(path, ca) => {
                let endpoint = Endpoint::from_static("https://localhost")
                    .tls_config(
                        ClientTlsConfig::new()
                            .ca_certificate(Certificate::from_pem(ca))
                            .domain_name("localhost"),
                    )
                    .unwrap();
                unix_endpoint(endpoint, path).await
            }
            Target::Tls(addr, ca) => Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(ca))
                        .domain_name("localhost"),
                )
                .unwrap()
                .connect()
                .await
                .unwrap(),
        }
    }

    /// The process's resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        status_kib(self.pid, "VmRSS:")
    }

    /// The most resident memory since the last [`Gateway::reset_peak`], in KiB.
    pub fn peak_kib(&self) -> u64 {
        status_kib(self.pid, "VmHWM:")
    }

    /// Starts the peak over from the memory resident now (Linux: `clear_refs` 5).
    pub fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").unwrap();
    }
}

/// `endpoint` dialled over the Unix socket at `path`.
async fn unix_endpoint(endpoint: Endpoint, path: &std::path::Path) -> Channel {
    crate::common::unix_channel(endpoint, path).await
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// One honest CreateUser call on `channel`, and how long it took.
pub async fn honest_call(channel: &Channel, n: u64) -> Duration {
    let request = CreateUserRequest {
        account_id: DEMO_ACCOUNT_ID.into(),
        email: Some(format!("honest{n}-{}@example.com", std::process::id())),
        username: None,
        user_type: UserType::PrivateUser as i32,
        request_id: String::new(),
    };
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        ChimeServiceClient::new(channel.clone()).create_user(request),
    )
    .await
    .expect("the honest call is answered");
    answer.expect("the honest call succeeds");
    started.elapsed()
}
