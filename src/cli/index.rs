//! `siam index`: embeds a dataset's images and its label texts (or captions) with a model and
//! builds HNSW indexes over both ([`siam::index::dataset::build_index`]).

use std::path::PathBuf;
use std::sync::Arc;

use siam::index::dataset::{build_index, BuildOptions, Subset};
use siam::index::HnswParams;

use super::common::{recorded_split, report_missing, report_skipped, Bars, ModelArgs};
use siam::dataset::DataConfig;
use siam::device::DeviceConfig;

/// Build an HNSW index over a dataset's images and texts.
#[derive(clap::Args, Debug)]
#[command(mut_arg("data", |a| a.required(true)))]
pub struct IndexArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataConfig,
    #[command(flatten)]
    pub device: DeviceConfig,
    /// Output index folder.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Which records to index: all, train, val or test.
    #[arg(long, default_value = "all")]
    pub split: Subset,
    /// HNSW neighbours per node (M).
    #[arg(long, default_value_t = 16)]
    pub m: usize,
    /// HNSW candidate list while building.
    #[arg(long, default_value_t = 200)]
    pub ef_construction: usize,
    /// HNSW candidate list while searching.
    #[arg(long, default_value_t = 64)]
    pub ef: usize,
    /// Batch size for embedding.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Decoding threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// Runs `siam index`.
pub fn run(args: IndexArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size: must be at least 1");
    anyhow::ensure!(args.threads > 0, "--threads: must be at least 1");
    let params = HnswParams {
        m: args.m,
        ef_construction: args.ef_construction,
        ef_search: args.ef,
        ..HnswParams::default()
    };
    params.validate().map_err(|e| match e {
        // The parameter by its flag.
        siam::index::IndexError::BadParams { what, .. } => {
            let flag = match what {
                "ef_search" => "ef",
                other => other,
            };
            anyhow::anyhow!("--{}: {e}", flag.replace('_', "-"))
        }
        other => other.into(),
    })?;
    use siam::output::{check_replaceable, command_line, OutputKind, OutputLock};
    check_replaceable(&args.out, OutputKind::JointIndex)?;
    let recorded = recorded_split(&args.model.model);
    let data = args.data.open_for_model(recorded.as_ref())?;
    let records = args.split.records(&data.dataset)?;
    let _lock = OutputLock::acquire(&args.out, &command_line())?;
    report_missing(&data.dataset);
    if let (Subset::Only(_), true) = (args.split, data.model_split_known()) {
        siam::console::err_line(format_args!("{}", data.describe()));
        if let Some(n) = data.trained_on(&records) {
            if n > 0 && args.split != Subset::Only(siam_data::dataset::Split::Train) {
                siam::console::err_line(format_args!(
                    "warning: {n} of the indexed images were in the model's training split"
                ));
            }
        }
    }
    let ds = Arc::new(data.dataset);
    let device = args.device.open()?;
    let enc = args.model.load(&device)?;
    let opts = BuildOptions {
        params,
        batch_size: args.batch_size,
        threads: args.threads,
    };
    let done = build_index(
        &enc,
        &args.model.model,
        args.model.arch.as_deref(),
        ds,
        &records,
        &args.out,
        opts,
        &Bars::default(),
    )?;
    report_skipped(&done.skipped);
    siam::console::err_line(format_args!(
        "indexed {} images and {} texts in {}",
        done.images,
        done.texts,
        args.out.display()
    ));
    Ok(())
}
