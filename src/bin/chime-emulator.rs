//! `chime-emulator`: the Chime-compatible CreateUser and ListUsers endpoint as its own process, for
//! other teams' tests. Point any AWS SDK at it with `AWS_ENDPOINT_URL_CHIME=http://<listen>`.

use std::{net::SocketAddr, process::ExitCode};

use chime_gateway::{
    config,
    emulator::{DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY, DEMO_ACCOUNT_ID, Emulator, EmulatorConfig},
};
use clap::Parser;
use tokio::net::TcpListener;

/// A faithful Amazon Chime CreateUser and ListUsers emulator: SigV4 verified, AWS-shaped errors,
/// scriptable faults (before and after serving) and chaos under /_emulator/.
#[derive(Debug, Parser)]
#[command(name = "chime-emulator", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "CHIME_EMULATOR_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The access key id whose signatures are accepted.
    #[arg(long, env = "CHIME_EMULATOR_ACCESS_KEY_ID", default_value = DEFAULT_ACCESS_KEY_ID)]
    access_key_id: String,
    /// The matching secret access key.
    #[arg(long, env = "CHIME_EMULATOR_SECRET_ACCESS_KEY", default_value = DEFAULT_SECRET_ACCESS_KEY,
          hide_default_value = true)]
    secret_access_key: String,
    /// Comma-separated account ids that exist.
    #[arg(long, env = "CHIME_EMULATOR_ACCOUNTS", value_delimiter = ',', default_value = DEMO_ACCOUNT_ID)]
    accounts: Vec<String>,
    /// Calls per second allowed per account; unset never throttles.
    #[arg(long, env = "CHIME_EMULATOR_THROTTLE_RPS", value_parser = clap::value_parser!(u32).range(1..))]
    throttle_rps: Option<u32>,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!(
                "chime-emulator: {}",
                config::one_line(&e).trim_start_matches("error: ")
            );
            return ExitCode::from(64);
        }
    };
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chime-emulator: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let config = EmulatorConfig {
        access_key_id: args.access_key_id,
        secret_access_key: args.secret_access_key,
        accounts: args
            .accounts
            .into_iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect(),
        throttle_rps: args.throttle_rps,
    };
    let emulator = Emulator::serve(listener, config)?;
    let shutdown = chime_gateway::server::shutdown_signal()?;
    println!("chime-emulator: listening on {}", emulator.endpoint_url());
    shutdown.await;
    Ok(())
}
