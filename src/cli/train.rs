//! `siam train`: arguments, the progress display, and the call into [`siam::train::train`];
//! with `--prompt`, CoOp prompt learning ([`prompt`], this command's other half).

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;
use std::time::Duration;

use siam::device::DeviceConfig;
use siam::train::{Event, Observer, TrainConfig, TrainReport};

mod prompt;

/// Fine-tune CLIP's towers with metric learning (or train a small CLIP from scratch).
///
/// With no --data and no --model, trains the built-in tiny CLIP architecture from random
/// weights on the synthetic shapes demo set.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// The run: every flag of `siam::train::TrainConfig`'s sections.
    #[command(flatten)]
    pub config: TrainConfig,
    /// Where to compute.
    #[command(flatten)]
    pub device: DeviceConfig,
    /// Write a JSON summary (config, recall before/after, time, throughput) to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Do not build `<out>/index` (an HNSW index of the dataset for `siam query`) after training.
    #[arg(long)]
    pub no_index: bool,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[command(flatten)]
    pub prompt: prompt::PromptArgs,
}

/// Draws the progress bar and prints the run's messages to stderr.
struct Console {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Console {
    fn line(&self, s: &str) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(s),
            _ => {
                siam::console::err_line(format_args!("{s}"));
            }
        }
    }
}

fn fmt_metrics(m: &std::collections::BTreeMap<String, f64>) -> String {
    ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
        .iter()
        .filter_map(|k| {
            m.get(*k)
                .map(|v| format!("{} {:.3}", k.replace("_r", " R@"), v))
        })
        .collect::<Vec<_>>()
        .join("  ")
}

impl Observer for Console {
    fn event(&mut self, e: &Event) {
        match e {
            Event::Info(s) => self.line(s),
            Event::Start { total_steps, done } => {
                if !self.quiet {
                    let bar = ProgressBar::with_draw_target(
                        Some(*total_steps as u64),
                        ProgressDrawTarget::stderr(),
                    );
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{bar:30} {pos}/{len} steps  {msg}  ETA {eta}",
                        )
                        .expect("valid template"),
                    );
                    bar.set_position(*done as u64);
                    bar.enable_steady_tick(Duration::from_millis(500));
                    self.bar = Some(bar);
                }
            }
            Event::Step(m) => {
                if let Some(b) = &self.bar {
                    b.set_position(m.step as u64);
                    b.set_message(format!(
                        "loss {:.4}  active {:.2}  gap {:.3}  {:.0} pairs/s",
                        m.loss, m.stats.active_fraction, m.stats.gap, m.pairs_per_s
                    ));
                }
            }
            Event::Epoch(r) => {
                let what = if r.epoch == 0 {
                    "before training".to_string()
                } else {
                    let stats = r
                        .train_stats
                        .map_or(String::new(), |s| format!("  {}", s.describe()));
                    format!(
                        "epoch {} (loss {:.4}{stats})",
                        r.epoch,
                        r.train_loss.unwrap_or(f64::NAN)
                    )
                };
                if !r.metrics.is_empty() {
                    self.line(&format!("{what}: {}", fmt_metrics(&r.metrics)));
                } else {
                    self.line(&what);
                }
            }
            Event::Checkpoint(_) => {}
            Event::Warning(w) => self.line(&format!("warning: {w}")),
        }
    }
}

/// Runs `siam train`.
pub fn run(args: TrainArgs) -> Result<()> {
    if args.prompt.prompt.is_some() {
        return prompt::run(&args);
    }
    let cfg = &args.config;
    cfg.validate()?;
    {
        use siam::output::{check_replaceable, OutputKind};
        check_replaceable(&cfg.out, OutputKind::TrainRun)?;
        if let Some(p) = &args.report {
            check_replaceable(p, OutputKind::TrainReport)?;
        }
    }
    // Held until the model, the index and the report are written; a second writer of the same
    // folder (a fresh run or a --resume) is refused while this process lives.
    let _lock = siam::output::OutputLock::acquire(&cfg.out, &siam::output::command_line())?;
    let device = args.device.open()?;
    let mut console = Console {
        bar: None,
        quiet: args.quiet,
    };
    let result = siam::train::train(cfg, &device, None, &mut console);
    if let Some(b) = console.bar.take() {
        b.finish_and_clear();
    }
    let report: TrainReport = result?;
    summarise(&report);
    if report.finished && !args.no_index {
        index_output(cfg, &device)?;
    }
    if let Some(p) = &args.report {
        let json = serde_json::to_vec_pretty(&report)?;
        siam::output::write_file(p, siam::output::OutputKind::TrainReport, &json)
            .with_context(|| format!("writing --report {}", p.display()))?;
        siam::console::err_line(format_args!("report: {}", p.display()));
    }
    Ok(())
}

/// Builds `<out>/index` over every record of the training dataset with the trained model, so
/// `siam query --index <out>` answers at once.
fn index_output(cfg: &TrainConfig, device: &burn::tensor::Device) -> Result<()> {
    let ds = match cfg.data.path()? {
        Some(_) => cfg.data.open(cfg.split_seed())?.0,
        None => cfg.demo_dataset(),
    };
    let enc = siam::model::Encoder::load(&cfg.out, None, device)?;
    let records: Vec<usize> = (0..ds.len()).collect();
    let out = cfg.out.join("index");
    let done = siam::index::dataset::build_index(
        &enc,
        &cfg.out,
        None,
        std::sync::Arc::new(ds),
        &records,
        &out,
        siam::index::dataset::BuildOptions {
            params: siam::index::HnswParams::default(),
            batch_size: 64,
            threads: cfg.threads.max(1),
        },
        &super::common::Bars::default(),
    )?;
    super::common::report_skipped(&done.skipped);
    siam::console::err_line(format_args!(
        "index: {} images and {} texts in {} (try `siam query --index {} --text \"a large red circle on a white background\"`)",
        done.images,
        done.texts,
        out.display(),
        cfg.out.display()
    ));
    Ok(())
}

fn summarise(r: &TrainReport) {
    if !r.finished {
        siam::console::err_line(format_args!(
            "stopped after {} steps (--max-steps); continue with --resume (checkpoint in {})",
            r.steps,
            r.output.join("checkpoint").display()
        ));
        return;
    }
    if let siam::model::folder::InitialWeights::Random { arch, .. } = &r.initial_weights {
        siam::console::err_line(format_args!(
            "note: {arch} was trained from RANDOM initial weights (no checkpoint given)"
        ));
    }
    if let (Some(b), Some(a)) = (&r.before, &r.after) {
        for k in ["i2t_r1", "t2i_r1"] {
            if let (Some(x), Some(y)) = (b.get(k), a.get(k)) {
                siam::console::err_line(format_args!(
                    "{}: {:.3} before -> {:.3} after",
                    k.replace("_r", " recall@"),
                    x,
                    y
                ));
            }
        }
    }
    siam::console::err_line(format_args!(
        "{} steps in {:.1} s ({:.0} pairs/s, {:.1} images/s); model (epoch {}) written to {}",
        r.steps,
        r.train_seconds,
        r.pairs_per_second,
        r.images_per_second,
        r.kept_epoch,
        r.output.display()
    ));
}
