//! The `handoff` command. Thin: it parses flags, layers the configuration, sets up logging and hands over to
//! `handoff_server`.

mod settings;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use handoff_server::{AppState, serve};
use tokio::net::TcpListener;

use settings::ConfigArgs;

/// mimalloc instead of glibc malloc: a small request makes dozens of short-lived allocations across threads, and
/// glibc spent about a quarter of the instructions of a 4 KiB download on them (bench/RESULTS.md, "Profile"). It
/// also returns large blocks (argon2id's 19 MiB) to the system instead of keeping them in per-thread arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Copy this instance (signing keys, accounts, files) to other backends, e.g. SQLite + local disk →
    /// PostgreSQL (or DynamoDB) + S3.
    ///
    /// The usual flags (--data-dir, --database-url, --storage-url, --config, HANDOFF_* environment) name the
    /// SOURCE; --to-database-url and --to-storage-url name the TARGET. Stop the source server (or keep it
    /// read-only) during the copy: files uploaded meanwhile may be missed.
    ///
    /// Signing keys and accounts are copied as they are (same ids, password hashes and flags), so everyone signs
    /// in with the same password and access tokens already issued keep verifying. Every file's bytes stream into
    /// a new blob of the target and are checked against the recorded SHA-256 before its record is stored; a
    /// mismatch aborts the run. Refresh tokens are not copied: users sign in again.
    ///
    /// Safe to run again: whatever is already in the target (signing keys by kid, accounts by id, files by key)
    /// is skipped, so an interrupted run resumes where it stopped.
    MigrateStorage(MigrateStorageArgs),
    /// Print the OpenAPI document.
    Openapi,
}

#[derive(Debug, clap::Args)]
struct MigrateStorageArgs {
    #[command(flatten)]
    source: ConfigArgs,
    /// Target metadata store: postgres://…, sqlite://PATH or dynamodb://TABLE?region=…. A database must exist (it
    /// is migrated); a DynamoDB table is created when missing unless `ensure=false`.
    #[arg(long, env = "HANDOFF_TO_DATABASE_URL", value_name = "URL", hide_env_values = true)]
    to_database_url: String,
    /// Target blob store: s3://BUCKET/PREFIX?endpoint=…, or file://DIR.
    #[arg(long, env = "HANDOFF_TO_STORAGE_URL", value_name = "URL", hide_env_values = true)]
    to_storage_url: String,
}

/// Makes mimalloc give freed memory back to the system at once. By default it keeps freed pages for a second (v3's
/// `purge_delay`), and eagerly commits its arena, whose freed pages then stay resident: an idle server kept about
/// 40 MiB, mostly argon2id's 19 MiB working areas from recent sign-ins, and every transfer's peak started from there
/// (bench/RESULTS.md, "Memory"). Measured under load, immediate purging cost no throughput. An operator's own
/// `MIMALLOC_*` variables win.
///
/// It must run before mimalloc's own initialisation (an ELF constructor of priority 101), which reads the options and
/// reserves the arena: hence a constructor of priority 100 rather than a call from `main`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
#[used]
#[unsafe(link_section = ".init_array.00100")]
static TUNE_ALLOCATOR: extern "C" fn() = {
    extern "C" fn tune_allocator() {
        // Indices in mimalloc's `mi_option_e` (the same in v2 and v3); libmimalloc-sys names only some of them.
        const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
        const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        for (option, variable) in [
            (ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT"),
            (PURGE_DELAY, "MIMALLOC_PURGE_DELAY"),
        ] {
            if std::env::var_os(variable).is_none() {
                // SAFETY: `mi_option_set` stores an integer in mimalloc's option table, for any index and value.
                unsafe { libmimalloc_sys::mi_option_set(option, 0) };
            }
        }
    }
    tune_allocator
};

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
        // Colour codes only for a person at a terminal: in a log file they are noise, and formatting them is a
        // measurable share of a small request's CPU.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::MigrateStorage(args) => {
            init_logging();
            let config = args.source.load()?;
            let stores = handoff_server::migrate::Stores::open(&config, &args.to_database_url, &args.to_storage_url)
                .await
                .context("opening the stores")?;
            let summary = stores
                .migrate(&mut |progress| println!("{progress}"))
                .await
                .context("migration stopped; fix the cause and run the same command again to resume")?;
            println!("{summary}");
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
