//! `fabric`: start, watch, kill and restart the nodes of a topology on this machine.

mod cli;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "fabric",
    version,
    about = "Runs a Mail Fabric topology as one process per node"
)]
struct Cli {
    /// Where the fabric keeps node state, logs and fabric.json.
    #[arg(long, global = true, env = "FABRIC_DATA_DIR", default_value = "var")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start every node of a topology and wait until all are ready.
    Up {
        /// The topology file.
        #[arg(default_value = "topology/two-site.toml")]
        topology: PathBuf,
        /// Return once the nodes are ready instead of supervising them until Ctrl-C.
        #[arg(long)]
        detach: bool,
        /// How long each node may take to become ready.
        #[arg(long, default_value = "60", value_name = "SECONDS")]
        ready_timeout: u64,
    },
    /// Show the domains and every node: addresses, state, pid, uptime.
    Status {
        /// Machine-readable output for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Send a signal to one node (SIGKILL unless told otherwise).
    Kill {
        node: String,
        #[arg(long, value_enum, default_value = "kill")]
        signal: SignalName,
    },
    /// Start one node again (or resume it if it was stopped with SIGSTOP).
    Start {
        node: String,
        #[arg(long, default_value = "60", value_name = "SECONDS")]
        ready_timeout: u64,
    },
    /// Stop every node: SIGTERM, then SIGKILL after the topology's shutdown deadline.
    Down,
    /// Store operations.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Rebuild a running store from its mirrors (after its disk was lost or replaced).
    Rebuild { node: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SignalName {
    Kill,
    Term,
    Stop,
    Cont,
}

impl SignalName {
    pub fn signal(self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal;
        match self {
            SignalName::Kill => Signal::SIGKILL,
            SignalName::Term => Signal::SIGTERM,
            SignalName::Stop => Signal::SIGSTOP,
            SignalName::Cont => Signal::SIGCONT,
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fabric: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli.data_dir;
    match cli.command {
        Command::Up {
            topology,
            detach,
            ready_timeout,
        } => cli::up::up(&topology, &data_dir, detach, ready_timeout).await,
        Command::Status { json } => cli::status::status(&data_dir, json).await,
        Command::Kill { node, signal } => {
            cli::control::kill(&data_dir, &node, signal.signal()).await
        }
        Command::Start {
            node,
            ready_timeout,
        } => cli::control::start(&data_dir, &node, ready_timeout).await,
        Command::Down => cli::up::down(&data_dir).await,
        Command::Store {
            command: StoreCommand::Rebuild { node },
        } => cli::control::rebuild(&data_dir, &node).await,
    }
}
