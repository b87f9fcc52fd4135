//! The `graphvcr` binary: parse the command line, start logging, resolve the config,
//! run, and map the outcome to an exit code (0 ok, 1 failure, 2 bad usage or config).

use std::process::ExitCode;

use clap::Parser;
use graphvcr::app::{self, AppError};
use graphvcr::cli::{Cli, Command, LogFormat};
use graphvcr::config::Config;
use graphvcr::emulate::EmulatorOptions;
use graphvcr::{cassette, demo};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("graphvcr: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("graphvcr: {error:#}");
            let usage = error
                .downcast_ref::<AppError>()
                .is_some_and(|e| matches!(e, AppError::Config(_)));
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = Config::resolve(&args).map_err(AppError::from)?;
            app::serve(config, app::shutdown_signal()).await?;
        }
        Command::Emulate(args) => {
            let options = EmulatorOptions {
                patch_no_content: args.patch_no_content,
                require_auth: !args.no_auth,
            };
            app::emulate(
                args.listen,
                options,
                args.tls_cert_out,
                app::shutdown_signal(),
            )
            .await?;
        }
        Command::Demo(args) => demo::run(args.serve).await?,
        Command::Cassette(command) => cassette::run(command, &mut std::io::stdout().lock()).await?,
        Command::Audit(args) => {
            graphvcr::audit::command::run(*args, &mut std::io::stdout().lock()).await?
        }
    }
    Ok(())
}
