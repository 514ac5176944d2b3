//! The `siam` command line: parses arguments and calls the library.

use clap::{Parser, Subcommand};
use siam::cli;

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
    let cli = Cli::parse();
    siam::hub::set_offline(cli.offline);
    let result = match cli.command {
        Command::Train(a) => cli::train::run(a),
        Command::Embed(a) => cli::embed::run(a),
        Command::Classify(a) => cli::classify::run(a),
        Command::Index(a) => cli::index::run(a),
        Command::Query(a) => cli::query::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::DemoData(a) => cli::demo_data::run(a),
        Command::Export(a) => cli::export::run(a),
        Command::Merge(a) => cli::merge::run(a),
        Command::PseudoLabel(a) => cli::pseudo_label::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined, no backtrace.
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            let mut line = msg.join(": ");
            // `thiserror` messages often already include their source; drop exact repeats.
            for m in msg.iter().skip(1) {
                let twice = format!("{m}: {m}");
                line = line.replace(&twice, m);
            }
            // One line, whatever the causes quote: control characters (ESC, CR, newlines from
            // a hostile file) are escaped.
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
