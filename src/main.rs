//! `wsloop`: parses the command line, sets up logging and runs the server.

use clap::Parser;

/// A small, fast WebSocket (RFC 6455) server on one event loop.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: wsloop::Config,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let run = || -> std::io::Result<()> {
        let mut server = wsloop::Server::bind(cli.config)?;
        server.stop_on_signals()?;
        server.run()
    };
    if let Err(e) = run() {
        log::error!("{e}");
        std::process::exit(1);
    }
}
