//! The `weir` binary: command-line parsing, logging setup, and wiring to the crates.

mod admin;
mod bench;
mod crash_writer;
mod pipeline;
mod rest;
mod run;
mod tour;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the broker allocates and frees a body and a few strings per message on several
/// threads; glibc malloc's arenas were a tenth of the send/pull CPU profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Weir: a RocketMQ-style message broker with connectors and streaming SQL.
#[derive(Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    /// Data directory of the embedded broker.
    #[arg(long, global = true, default_value = "./data")]
    data_dir: PathBuf,
    /// Commitlog segment size for a new data directory (an existing one keeps its own).
    #[arg(long, global = true, default_value_t = 1 << 30)]
    segment_size_bytes: u64,
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `weir_broker=debug`.
    #[arg(long, global = true, default_value = "warn", env = "WEIR_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A short tour: create a topic, send, consume, query by key.
    Tour,
    /// Create, list, describe or delete topics.
    #[command(subcommand)]
    Topic(admin::TopicCommand),
    /// Send one message (or one per stdin line).
    Send(admin::SendArgs),
    /// Consume a topic as a consumer group, committing offsets.
    Consume(admin::ConsumeArgs),
    /// Look messages up.
    #[command(subcommand)]
    Message(admin::MessageCommand),
    /// Show or reset consumer group offsets.
    #[command(subcommand)]
    Group(admin::GroupCommand),
    /// Run a pipeline file on the embedded broker until Ctrl-C.
    Run {
        /// The pipeline file.
        file: PathBuf,
        /// Address of the REST admin API and `/metrics` (Kafka Connect's port by default).
        #[arg(long, default_value = "127.0.0.1:8083")]
        admin_listen: std::net::SocketAddr,
    },
    /// Run a bounded SQL query over topics and print the rows (for inspection). Topics are
    /// tables of their JSON messages (quote names with `-`: `FROM "access-logs"`).
    Sql {
        /// The query, e.g. `SELECT level, count(*) FROM "app-logs" GROUP BY level`.
        query: String,
        /// Where to start reading: earliest, latest, or a time in ms since the epoch.
        #[arg(long, default_value = "earliest")]
        from: String,
        /// Most messages read per topic.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
        /// Print DataFusion's plan instead of running the query.
        #[arg(long)]
        explain: bool,
    },
    /// Check a pipeline file (YAML) without running it.
    Validate {
        /// The pipeline file.
        file: PathBuf,
    },
    /// Benchmarks that print one JSON line with a same-run baseline.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Tools for tests.
    #[command(subcommand, hide = true)]
    Debug(crash_writer::DebugCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            match error.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = error.print();
                    return ExitCode::SUCCESS;
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = error.print();
                    return ExitCode::from(2);
                }
                _ => {}
            }
            // One line: clap's first line already starts with `error:`.
            let rendered = error.render().to_string();
            eprintln!("{} (see --help)", rendered.lines().next().unwrap_or("error: invalid arguments"));
            return ExitCode::from(2);
        }
    };
    let filter =
        tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let store = admin::StoreArgs { data_dir: cli.data_dir, segment_size_bytes: cli.segment_size_bytes };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Tour => tour::run(&store).await,
            Command::Topic(command) => admin::topic(&store, command).await,
            Command::Send(args) => admin::send(&store, args).await,
            Command::Consume(args) => admin::consume(&store, args).await,
            Command::Message(command) => admin::message(&store, command).await,
            Command::Group(command) => admin::group(&store, command).await,
            Command::Sql { query, from, limit, explain } => admin::sql(&store, &query, &from, limit, explain).await,
            Command::Validate { file } => validate(&file),
            Command::Run { file, admin_listen } => run::run(&file, store.segment_size_bytes, admin_listen).await,
            Command::Bench(command) => bench::run(command, store.segment_size_bytes).await,
            Command::Debug(command) => crash_writer::run(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `weir validate FILE`: one summary line, or the first problem as `file:line:column: …`.
fn validate(file: &std::path::Path) -> anyhow::Result<()> {
    let pipeline = pipeline::load(file)?;
    println!("ok: {}", pipeline::summary(&pipeline));
    Ok(())
}
