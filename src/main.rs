//! The `siam` binary: parses arguments, calls the subcommand's front end in [`cli`] (which
//! calls the library), and reports an error as one line.

use clap::{Parser, Subcommand};

mod cli;

/// Adapt CLIP to your own images and label texts, the metric-learning way.
#[derive(Parser, Debug)]
#[command(name = "siam", version, about, long_about = None)]
struct Cli {
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
    /// Write the synthetic demo set as an image folder and a captions table.
    DemoData(cli::demo_data::DemoDataArgs),
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            eprintln!("siam: error: {}", one_line(&e.render().to_string()));
            return std::process::ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Train(a) => cli::train::run(a),
        Command::Embed(a) => cli::embed::run(a),
        Command::Classify(a) => cli::classify::run(a),
        Command::Index(a) => cli::index::run(a),
        Command::Query(a) => cli::query::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::DemoData(a) => cli::demo_data::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, each printed once (library errors either
            // print their cause or chain it, never both).
            eprintln!("siam: error: {e:#}");
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
