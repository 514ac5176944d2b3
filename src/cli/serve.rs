//! `siam serve`: loads an index folder and its model once and answers searches over HTTP, with
//! a search page at `/` (see [`siam::serve`]).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use siam::device::DeviceConfig;
use siam::serve::search::OpenOptions;
use siam::serve::{SearchService, ServeOptions};

/// Serve an index over HTTP: a JSON API and a search page.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The index folder (from `siam index`, or a `siam train` output folder).
    #[arg(long, short = 'i')]
    pub index: PathBuf,
    /// Model to embed the queries with (default: the one that built the index).
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Architecture for a bare checkpoint given with --model.
    #[arg(long)]
    pub arch: Option<String>,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// The dataset the index was built from, to serve thumbnails from (default: the indexed
    /// image paths, or the demo set for an index written by `siam train`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Allow queries by an image path on the server, for files below this folder only.
    #[arg(long, value_name = "DIR")]
    pub allow_paths: Option<PathBuf>,
    /// Largest k a query may ask for.
    #[arg(long, default_value_t = 100)]
    pub max_k: usize,
    /// Largest request body (an uploaded image) in MB.
    #[arg(long, default_value_t = 16)]
    pub max_body_mb: usize,
    /// Searches per second per client address (sustained; 0 turns the limit off).
    #[arg(long, default_value_t = 20.0)]
    pub rate_limit: f64,
    /// Searches a client may make in a burst before --rate-limit applies.
    #[arg(long, default_value_t = 40)]
    pub burst: u32,
    /// Searches computed at the same time (default: the number of cores).
    #[arg(long)]
    pub concurrency: Option<usize>,
    #[command(flatten)]
    pub device: DeviceConfig,
}

/// Runs `siam serve` until Ctrl-C (or SIGTERM), then finishes the requests in flight.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.max_k > 0, "--max-k must be at least 1");
    anyhow::ensure!(args.max_body_mb > 0, "--max-body-mb must be at least 1");
    anyhow::ensure!(
        args.rate_limit >= 0.0 && args.rate_limit.is_finite(),
        "--rate-limit must be a number of searches per second, 0 or more"
    );
    let device = args.device.open()?;
    let service = SearchService::open(
        &OpenOptions {
            index: args.index.clone(),
            model: args.model.clone(),
            arch: args.arch.clone(),
            data: args.data.clone(),
            allow_paths: args.allow_paths.clone(),
            max_k: args.max_k,
        },
        &device,
    )?;
    let info = service.info().clone();
    let defaults = ServeOptions::default();
    let opts = ServeOptions {
        max_body_bytes: args.max_body_mb << 20,
        rate_per_sec: args.rate_limit,
        burst: args.burst,
        concurrent_searches: args.concurrency.unwrap_or(defaults.concurrent_searches),
    };
    let router = siam::serve::router(Arc::new(service), &opts);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.addr)
            .await
            .with_context(|| format!("--addr {}: cannot listen", args.addr))?;
        let addr = listener.local_addr()?;
        let shutdown = shutdown_signal()?;
        eprintln!(
            "siam serve: {} images, {} texts ({} with thumbnails) from {}",
            info.images, info.texts, info.thumbnails, info.index
        );
        eprintln!("listening on http://{addr}/ (Ctrl-C stops)");
        siam::serve::serve(listener, router, shutdown)
            .await
            .context("serving")?;
        eprintln!("siam serve: stopped");
        anyhow::Ok(())
    })
}

/// A future that completes on Ctrl-C or, on Unix, SIGTERM. The handlers are installed here,
/// before the server says it listens, so a signal sent right after that line is never lost to
/// the default action (which would kill the process without the graceful stop).
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?;
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
