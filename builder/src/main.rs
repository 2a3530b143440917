// SPDX-License-Identifier: Apache-2.0
use clap::Parser;

use airlock::cli::{self, Cli, Cmd};

fn main() {
    let args = Cli::parse();
    let level = match args.verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .without_time()
        .init();
    airlock::cmd::install_interrupt_handler();
    let result = match args.cmd {
        Cmd::Build(a) => cli::build(a),
        Cmd::Lock(a) => cli::lock(a),
        Cmd::Fetch(a) => cli::fetch::run(a),
        Cmd::Bundle(a) => cli::fetch::bundle(a),
        Cmd::Boot(a) => cli::boot(a),
        Cmd::Node(a) => airlock::node::run(a),
        Cmd::Verify(a) => cli::verify(a),
        Cmd::Inspect(a) => cli::inspect(a),
        Cmd::Write(a) => cli::write::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
