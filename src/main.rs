//! `wsloop`: parses the command line, sets up logging and runs the server (or the client).

use clap::{Parser, Subcommand};

/// A small, fast WebSocket (RFC 6455) server on one event loop.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: wsloop::Config,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to a WebSocket server: stdin lines go out as messages, messages come out as lines.
    Client(wsloop::client::ClientArgs),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    if let Some(Command::Client(args)) = cli.command {
        std::process::exit(wsloop::client::run(args));
    }
    // A flag value that parses but makes no sense is a usage error too: clap's format, exit 2.
    if let Err(e) = cli.config.validate() {
        use clap::CommandFactory;
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, e)
            .exit();
    }
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
