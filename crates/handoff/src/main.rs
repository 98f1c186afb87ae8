//! The `handoff` command. Thin: it parses flags, layers the configuration, sets up logging and hands over to
//! `handoff_server`.

mod settings;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use handoff_server::{AppState, serve};
use tokio::net::TcpListener;

use settings::ConfigArgs;

#[derive(Debug, Parser)]
#[command(name = "handoff", version, about = "Secure file sharing: server and tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (self-hosted defaults: SQLite and local files under ./handoff-data, on 127.0.0.1:8080).
    Serve(ConfigArgs),
    /// Print the effective configuration (defaults, file, environment and flags combined), secrets redacted.
    Config(ConfigArgs),
    /// Apply pending database migrations and exit.
    Migrate(ConfigArgs),
    /// Add a new JWT signing key for the whole cluster. Nodes sign with it within a minute; tokens signed with
    /// older keys stay valid until they expire.
    RotateSigningKey(ConfigArgs),
    /// Print the OpenAPI document.
    Openapi,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            init_logging();
            let config = args.load()?;
            tracing::info!(config = ?config, "starting");
            let listener = TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("could not listen on {}", config.listen))?;
            let address = listener.local_addr().context("reading the bound address")?;
            let state = AppState::build(config).await.context("opening the stores")?;
            // On stdout, one line, so that scripts and tests can find the port when listening on :0.
            println!("handoff listening on http://{address}");
            serve(listener, state, shutdown_signal()).await.context("serving")?;
            tracing::info!("stopped");
        }
        Command::Config(args) => {
            let config = args.load()?;
            print!(
                "{}",
                toml::to_string(&config.redacted()).context("rendering the configuration")?
            );
        }
        Command::Migrate(args) => {
            init_logging();
            let config = args.load()?;
            // Opening the store applies pending migrations.
            AppState::build(config).await.context("migrating")?;
            println!("migrations applied");
        }
        Command::RotateSigningKey(args) => {
            let config = args.load()?;
            let meta = handoff_server::open_metadata(&config)
                .await
                .context("opening the metadata store")?;
            let kid = handoff_server::auth::tokens::TokenService::rotate(meta.as_ref())
                .await
                .context("storing the new key")?;
            println!("new signing key {kid}");
        }
        Command::Openapi => {
            let document = handoff_server::openapi_document();
            println!(
                "{}",
                document.to_pretty_json().context("rendering the OpenAPI document")?
            );
        }
    }
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
