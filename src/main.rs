//! The `wcfs` command line. Thin: it parses arguments and wires the libraries together.

use clap::Parser;

/// WCFS: a union filesystem for load-balanced web clusters.
#[derive(Parser, Debug)]
#[command(name = "wcfs", version, about, long_about = None)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
