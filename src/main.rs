//! `wsloop`: parses the command line, sets up logging and runs the server (or the client).

use clap::{Parser, Subcommand};

/// A small, fast WebSocket (RFC 6455) server on one event loop.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Read settings from this TOML file: its keys are the long flags (`port = 9001`,
    /// `max-message-size = "4MiB"`, `allowed-origin = ["https://a.example"]`); flags given
    /// on the command line win.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Print the effective configuration as TOML (secrets masked) and exit.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    config_: wsloop::Config,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to a WebSocket server: stdin lines go out as messages, messages come out as lines.
    Client(wsloop::client::ClientArgs),
}

fn main() {
    use clap::{CommandFactory, FromArgMatches};
    // `--config FILE` becomes arguments before the command line's; its errors name the file
    // and the key, in clap's format (exit 2).
    let args = wsloop::config_file::expand(&Cli::command(), std::env::args_os().collect())
        .unwrap_or_else(|e| {
            Cli::command()
                .error(clap::error::ErrorKind::InvalidValue, e)
                .exit()
        });
    let matches = Cli::command().get_matches_from(args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    wsloop::logging::init(cli.config_.log_format);
    if let Some(Command::Client(args)) = cli.command {
        std::process::exit(wsloop::client::run(args));
    }
    // A flag value that parses but makes no sense is a usage error too: clap's format, exit 2.
    if let Err(e) = cli.config_.validate() {
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, e)
            .exit();
    }
    if cli.print_config {
        print!("{}", wsloop::config_file::print(&Cli::command(), &matches));
        return;
    }
    let run = || -> std::io::Result<()> {
        if cli.config_.workers > 1 {
            // N loops on one port; a worker that fails or panics ends the process (exit 1).
            return wsloop::server::workers::run(cli.config_);
        }
        let mut server = wsloop::Server::bind(cli.config_)?;
        server.stop_on_signals()?;
        server.run()
    };
    if let Err(e) = run() {
        log::error!("{e}");
        std::process::exit(1);
    }
}
