//! The `siam` binary: parses arguments, calls the subcommand's front end in [`cli`] (which
//! calls the library), and reports an error as one line.

use clap::{Parser, Subcommand};

mod cli;

/// Adapt CLIP to your own images and label texts, the metric-learning way.
#[derive(Parser, Debug)]
#[command(name = "siam", version, about, long_about = None)]
struct Cli {
    /// Use only the Hugging Face cache for hf: models, never the network (as HF_HUB_OFFLINE=1).
    #[arg(long, global = true)]
    offline: bool,
    #[command(subcommand)]
    command: Command,
}

// Parsed once and consumed at once: the size of the `train` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Train twin towers (image and label-text) with contrastive, pairwise or triplet losses.
    Train(cli::train::TrainArgs),
    /// Embed images or texts into the joint space (.npy).
    Embed(cli::embed::EmbedArgs),
    /// Zero-shot classification of images against label texts.
    Classify(cli::classify::ClassifyArgs),
    /// Build HNSW indexes over a dataset's images and texts.
    Index(cli::index::IndexArgs),
    /// Query an index with images (answers: label texts) or --text (answers: images).
    Query(cli::query::QueryArgs),
    /// Serve an index over HTTP: a JSON search API and a search page.
    Serve(cli::serve::ServeArgs),
    /// Retrieval recall@k, zero-shot, MAP@R and linear-probe accuracy on a dataset.
    Eval(cli::eval::EvalArgs),
    /// Blend a zero-shot and a fine-tuned model in weight space (WiSE-FT).
    Merge(cli::merge::MergeArgs),
    /// Zero-shot labels for unlabelled images, as a table `siam train --data` reads.
    PseudoLabel(cli::pseudo_label::PseudoLabelArgs),
    /// Write the synthetic demo set as an image folder and a captions table.
    DemoData(cli::demo_data::DemoDataArgs),
    /// Write a model as a Hugging Face (transformers) or open_clip folder.
    Export(cli::export::ExportArgs),
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            let line = one_line(&e.render().to_string());
            siam::console::err_line(format_args!("siam: error: {line}"));
            return std::process::ExitCode::from(2);
        }
    };
    siam::hub::set_offline(cli.offline);
    let result = match cli.command {
        Command::Train(a) => cli::train::run(a),
        Command::Embed(a) => cli::embed::run(a),
        Command::Classify(a) => cli::classify::run(a),
        Command::Index(a) => cli::index::run(a),
        Command::Query(a) => cli::query::run(a),
        Command::Serve(a) => cli::serve::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::DemoData(a) => cli::demo_data::run(a),
        Command::Export(a) => cli::export::run(a),
        Command::Merge(a) => cli::merge::run(a),
        Command::PseudoLabel(a) => cli::pseudo_label::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, each printed once (library errors either
            // print their cause or chain it, never both).
            let line = format!("{e:#}");
            // Whatever the causes quote: control characters (ESC, CR, newlines from a hostile
            // file) are escaped.
            let line: String = line
                .chars()
                .flat_map(|c| {
                    let esc: Vec<char> = if c.is_control() {
                        c.escape_default().collect()
                    } else {
                        vec![c]
                    };
                    esc
                })
                .collect();
            siam::console::err_line(format_args!("siam: error: {line}"));
            std::process::ExitCode::FAILURE
        }
    }
}

/// clap's message on one line: its lines up to the usage, without the `error: ` prefix.
fn one_line(rendered: &str) -> String {
    let text: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = text.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line).to_string();
    format!("{line} (see siam --help)")
}
