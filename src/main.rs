//! The `graphvcr` binary: parse the command line, start logging, resolve the config,
//! run, and map the outcome to an exit code (0 ok, 1 failure, 2 bad usage or config).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use graphvcr::app::{self, AppError};
use graphvcr::ca::CertificateAuthority;
use graphvcr::cli::{CaCommand, CassetteCommand, Cli, Command};
use graphvcr::config::Config;
use graphvcr::emulate::EmulatorOptions;
use graphvcr::remote::{self, Target};
use graphvcr::store::Store;
use graphvcr::{cassette, demo};

/// jemalloc, not glibc's malloc: under replay load glibc spent ~15% of the CPU in
/// malloc and free and another ~7% waking threads blocked on its arena locks (memory is
/// freed on another thread than the one that allocated it: tokio's workers, the audit
/// and log writers, sled's threads), and without an arena cap it stranded memory in
/// per-thread arenas. jemalloc's thread caches avoid both: ~25% less CPU per replayed
/// request and a lower peak RSS (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options: one arena (the thread caches do the rest on a proxy whose threads
/// are few) and dirty pages returned within 100 ms, which keeps RSS near what is in use.
/// A background thread of jemalloc's returns them: otherwise the `madvise` calls land on
/// whichever request happens to free or allocate at the deadline, which showed in replay's
/// tail at concurrency 1 (BENCHMARKS.md). `_RJEM_MALLOC_CONF` in the environment
/// overrides them.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: MallocConf =
    MallocConf(c"narenas:1,dirty_decay_ms:100,muzzy_decay_ms:0,background_thread:true".as_ptr());

/// A C string pointer jemalloc reads once at start-up.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);
// SAFETY: it points at a static, immutable C string literal.
unsafe impl Sync for MallocConf {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_writer = graphvcr::logging::init(cli.log_format);
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
    let outcome = runtime.block_on(run(cli));
    drop(runtime);
    // Write out every queued log line before the final error, so they stay in order.
    drop(log_writer);
    match outcome {
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
                seed_devices: args.seed_devices,
                throttle_every: args.throttle_every,
                retry_after: args.retry_after,
                https: args.tls_cert_out.is_some(),
            };
            let tls = match (args.tls_cert_out, args.tls_cert, args.tls_key) {
                (Some(cert_out), _, _) => app::EmulatorTls::SelfSigned {
                    cert_out,
                    names: args.tls_names,
                },
                (None, Some(cert), Some(key)) => app::EmulatorTls::Files { cert, key },
                _ => app::EmulatorTls::Plain,
            };
            app::emulate(args.listen, options, tls, app::shutdown_signal()).await?;
        }
        Command::Demo(args) => demo::run(args.serve).await?,
        Command::Cassette(command) => run_cassette(command).await?,
        Command::Audit(args) => {
            graphvcr::audit::command::run(*args, &mut std::io::stdout().lock()).await?
        }
        Command::Ca(command) => run_ca(command)?,
    }
    Ok(())
}

fn run_ca(command: CaCommand) -> anyhow::Result<()> {
    let (CaCommand::Init(args) | CaCommand::Show(args) | CaCommand::Path(args)) = &command;
    let dir = match &args.ca_dir {
        Some(dir) => dir.clone(),
        None => {
            Config::resolve_store(&args.store)
                .map_err(AppError::from)?
                .forward
                .ca_dir
        }
    };
    let cert = CertificateAuthority::cert_path(&dir);
    match command {
        CaCommand::Init(_) => {
            let (_, created) = CertificateAuthority::load_or_create(&dir)?;
            let verb = if created {
                "created"
            } else {
                "kept the existing"
            };
            eprintln!("{verb} CA: certificate {}", cert.display());
            println!("{}", graphvcr::ca::environment_lines(&cert));
        }
        CaCommand::Show(_) => {
            let ca = CertificateAuthority::load(&dir).with_context(|| {
                format!("no CA in {} yet: run `graphvcr ca init`", dir.display())
            })?;
            print!("{}", ca.cert_pem());
            println!("\n{}", graphvcr::ca::environment_lines(&cert));
        }
        CaCommand::Path(_) => println!("{}", cert.display()),
    }
    Ok(())
}

async fn run_cassette(command: CassetteCommand) -> anyhow::Result<()> {
    // The store, or the admin API of the running proxy that holds it.
    let mut local = match remote::open(command.store_args()).map_err(AppError::from)? {
        Target::Remote(remote) => {
            let mut stdout = std::io::stdout().lock();
            cassette::run_remote(command, &remote, &mut stdout).await?;
            return Ok(());
        }
        Target::Local(store) => Some(store),
    };
    let mut open = |args: &graphvcr::cli::StoreArgs| -> anyhow::Result<(Store, Config)> {
        let config = Config::resolve_store(args).map_err(AppError::from)?;
        let store = local
            .take()
            .context("the store is opened once per command")?;
        store.start_flusher(config.store.commit_delay);
        Ok((store, config))
    };
    let mut stdout = std::io::stdout().lock();
    match command {
        CassetteCommand::List(args) => {
            let (store, _) = open(&args)?;
            cassette::print_list(&store, &mut stdout)?;
        }
        CassetteCommand::Show { name, store } => {
            let (store, _) = open(&store)?;
            cassette::print_show(&store, &name, &mut stdout)?;
        }
        CassetteCommand::Export {
            name,
            format,
            out,
            base_url,
            store,
        } => {
            let (store, _) = open(&store)?;
            cassette::run_export(
                &store,
                &name,
                format,
                &base_url,
                out.as_deref(),
                &mut stdout,
            )?;
        }
        CassetteCommand::Import {
            file,
            as_name,
            store,
        } => {
            let (store, config) = open(&store)?;
            // The document's text goes before its interactions are stored.
            let imported = {
                let text = cassette::read_file(&file)?;
                cassette::parse_any(&text, &file, as_name.as_deref().unwrap_or("imported"))?
            };
            let name = as_name.unwrap_or(imported.cassette);
            let count = cassette::import_interactions(
                &store,
                &name,
                imported.interactions,
                &config.matching,
            )?;
            // The next `serve` then starts without replaying the import from sled's log.
            store.close_and_compact()?;
            eprintln!("imported {count} interactions into cassette '{name}'");
        }
        CassetteCommand::Delete { name, store } => {
            let (store, _) = open(&store)?;
            match store.delete_cassette(&name).await? {
                Some(count) => eprintln!("deleted cassette '{name}' ({count} interactions)"),
                None => anyhow::bail!("no cassette named '{name}'"),
            }
            store.close()?;
        }
        CassetteCommand::Prune {
            name,
            older_than,
            store,
        } => {
            let age = humantime::parse_duration(&older_than).with_context(|| {
                format!("--older-than {older_than:?} is not a duration like 30d or 12h")
            })?;
            let cutoff = std::time::SystemTime::now()
                .checked_sub(age)
                .context("--older-than reaches before the epoch")?;
            let (store, _) = open(&store)?;
            let removed = store.prune(&name, cutoff).await?;
            store.close()?;
            eprintln!(
                "pruned {removed} interactions older than {older_than} from cassette '{name}'"
            );
        }
        CassetteCommand::Verify(args) => {
            let (store, config) = open(&args.store)?;
            cassette::run_verify(&args, cassette::Source::Store(&store), config, &mut stdout)
                .await?;
        }
        CassetteCommand::Suggest { name, store } => {
            let (store, config) = open(&store)?;
            cassette::run_suggest(&name, cassette::Source::Store(&store), &config, &mut stdout)
                .await?;
        }
    }
    Ok(())
}
