//! The `poold` binary: parse the command line, then serve, be a worker, check health, or be
//! the client.

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use poold::config::{Cli, CliCommand, LogFormat, ServeArgs};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        CliCommand::Worker => poold::worker::run(),
        CliCommand::Serve(args) => serve(*args),
        CliCommand::Healthcheck(args) => poold::healthcheck::run(&args),
        CliCommand::Client(command) => std::process::exit(poold::cli::run(command)),
    }
}

#[tokio::main]
async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    args.check()?;
    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    // Tests and scripts read this line to learn the port when binding port 0.
    println!("poold listening on http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
    poold::app::run(args, listener, shutdown).await
}

fn init_tracing(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("POOLD_LOG").unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
