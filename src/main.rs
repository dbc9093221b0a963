use clap::Parser;
use engine::cli::{run, Cli};

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        // One line, naming the file / line / tensor; the chain is joined by ": ".
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
