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
    /// Every hop of a message (node, action, time, elapsed), or a mailbox's recent messages.
    Trace {
        /// The fabric message id (the SMTP 250 reply says "queued as ID").
        #[arg(required_unless_present = "recipient")]
        message_id: Option<String>,
        /// List the recent messages of this mailbox instead.
        #[arg(long, conflicts_with = "message_id")]
        recipient: Option<String>,
        /// How many messages `--recipient` lists.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// The directory of users (mailboxes) of a running fabric.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// The sender blocklist (addresses or whole domains) of a running fabric.
    Blocklist {
        #[command(subcommand)]
        command: BlocklistCommand,
    },
    /// Send one message like a remote MTA: MX lookup in the fabric's DNS, exchangers in preference
    /// order, each address in turn. Prints the fabric message id and the host that took it.
    Send {
        #[arg(long)]
        from: String,
        /// A recipient (repeatable; all of one domain).
        #[arg(long, required = true)]
        to: Vec<String>,
        #[arg(long, default_value = "Hello from fabric send")]
        subject: String,
        /// The body (default: one line of text).
        #[arg(long)]
        body_file: Option<PathBuf>,
        #[command(flatten)]
        target: cli::send::Target,
    },
    /// Load generators.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// The mail queues (relay, outbound, to-internet) of every store: list, show, flush, hold,
    /// release, return to the sender.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Manual failover (operator token): the supervisor of another site FENCES the mail server (or
    /// every mail server of --site) -- it SIGKILLs the original even when it is healthy -- and starts
    /// a standby at its address. Users of the site who asked for notifications are told. With
    /// --mailbox USER@DOMAIN only that mailbox moves, to the other site's first store (merged).
    Failover {
        #[command(flatten)]
        target: cli::failover::Target,
    },
    /// Manual fail-back (operator token): the supervisor serving the mail server (or each mail server
    /// of --site) retires its standby; then start the original (`fabric start NODE`, or --restart).
    /// With --mailbox USER@DOMAIN that mailbox moves back to its home store, merged.
    Failback {
        #[command(flatten)]
        target: cli::failover::Target,
        /// Start the originals at once (a fabric started with `fabric up`).
        #[arg(long)]
        restart: bool,
        #[arg(long, default_value = "60", value_name = "SECONDS")]
        ready_timeout: u64,
    },
    /// A seeded fault campaign while mail flows (SIGKILL, SIGSTOP, restarts, a whole site down), then
    /// every mailbox read over IMAP and a verdict: sent, acknowledged, delivered, lost, duplicated.
    /// Exits non-zero on any loss or duplicate.
    Chaos(cli::chaos::Args),
    /// What the simulated outside world (the sink nodes) received from the fabric.
    Outside {
        #[command(subcommand)]
        command: OutsideCommand,
    },
    /// Write the docker deployment of a topology: the compose file, beside it the docker topology
    /// (topology.toml) and the TLS directory (var/tls) the containers mount.
    Compose {
        /// The topology file.
        #[arg(default_value = "topology/two-site.toml")]
        topology: PathBuf,
        /// The compose file to write.
        #[arg(short, long, default_value = "docker/compose.yaml")]
        output: PathBuf,
        /// The image every service runs.
        #[arg(long, default_value = "mailfabric:latest")]
        image: String,
        /// Print the flows of this zone's access list (refused: no route from the zone's network;
        /// allowed: the routers' forwarded ports) instead of writing anything.
        #[arg(long, value_name = "ZONE")]
        flows: Option<String>,
        /// The compose project the file is for: a zone whose mapped subnet overlaps a network of
        /// the Docker Engine outside this project, or a route of this host, moves to a free one.
        #[arg(long, default_value = "mailfabric")]
        project: String,
        /// Keep every zone at its mapped subnet (127.A.B.C/n -> 10.A.B.C/n) whatever is in use.
        #[arg(long)]
        keep_subnets: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Send many messages the way `fabric send` does (MX lookup, failover between exchangers) and
    /// print the rate and latency.
    Smtp(cli::bench_smtp::Args),
}

/// ID is a fabric message id (every queued item carrying it) or STORE:QUEUE:ITEMID.
#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// One row per queued item, then a summary per queue.
    List {
        /// Only items on this store or accepted by this node.
        #[arg(long)]
        node: Option<String>,
        /// Only this queue (relay, outbound, to-internet).
        #[arg(long)]
        queue: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Every field of an item, its metadata and the message's trace.
    Show { id: String },
    /// Try now: one item, or (without ID) every item of every queue that is neither held nor leased.
    Flush { id: Option<String> },
    /// Stop the attempts of an item until it is released.
    Hold { id: String },
    /// Release a held item; it is tried at once.
    Release { id: String },
    /// Give up: the queue's worker returns the message to its sender (a DSN) and drops it.
    Bounce { id: String },
}

#[derive(Debug, Subcommand)]
enum OutsideCommand {
    /// Mail the fabric delivered to "remote MXes" (the SMTP sink).
    Messages {
        #[arg(long)]
        json: bool,
    },
    /// SMS the fabric sent to the SMS gateway sink.
    Sms {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct PasswordArgs {
    /// The password (visible in the process list: prefer --password-stdin).
    #[arg(long)]
    password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
}

impl PasswordArgs {
    fn source(&self) -> cli::directory::PasswordSource {
        cli::directory::PasswordSource {
            password: self.password.clone(),
            stdin: self.password_stdin,
        }
    }
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a mailbox user (or replace its settings).
    Add {
        address: String,
        #[command(flatten)]
        password: PasswordArgs,
        /// Where notifications go when `--notify alternate`.
        #[arg(long)]
        alternate: Option<String>,
        /// The SMS number for `--notify sms`.
        #[arg(long)]
        sms: Option<String>,
        #[arg(long, value_enum, default_value = "none")]
        notify: cli::directory::Notify,
    },
    /// List the users (never their password hashes).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Change a user's password.
    Passwd {
        address: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Remove a user from the directory (its mail is kept).
    Remove { address: String },
}

#[derive(Debug, Subcommand)]
enum BlocklistCommand {
    /// Refuse mail from an address or a whole domain.
    Add { entry: String },
    /// Accept it again.
    Remove { entry: String },
    /// Show the blocklist.
    List,
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

#[tokio::main]
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
        Command::Trace {
            message_id,
            recipient,
            limit,
            json,
        } => match (message_id, recipient) {
            (_, Some(r)) => cli::trace::recipient(&data_dir, &r, limit).await,
            (Some(id), None) => cli::trace::trace(&data_dir, &id, json).await,
            (None, None) => anyhow::bail!("give a message id or --recipient ADDRESS"),
        },
        Command::User { command } => match command {
            UserCommand::Add {
                address,
                password,
                alternate,
                sms,
                notify,
            } => {
                cli::directory::user_add(
                    &data_dir,
                    &address,
                    &password.source(),
                    alternate,
                    sms,
                    notify,
                )
                .await
            }
            UserCommand::List { json } => cli::directory::user_list(&data_dir, json).await,
            UserCommand::Passwd { address, password } => {
                cli::directory::user_passwd(&data_dir, &address, &password.source()).await
            }
            UserCommand::Remove { address } => {
                cli::directory::user_remove(&data_dir, &address).await
            }
        },
        Command::Blocklist { command } => match command {
            BlocklistCommand::Add { entry } => {
                cli::directory::blocklist_add(&data_dir, &entry).await
            }
            BlocklistCommand::Remove { entry } => {
                cli::directory::blocklist_remove(&data_dir, &entry).await
            }
            BlocklistCommand::List => cli::directory::blocklist_list(&data_dir).await,
        },
        Command::Send {
            from,
            to,
            subject,
            body_file,
            target,
        } => {
            cli::send::send(
                &data_dir,
                &target,
                &from,
                &to,
                &subject,
                body_file.as_deref(),
            )
            .await
        }
        Command::Bench {
            command: BenchCommand::Smtp(args),
        } => cli::bench_smtp::run(&data_dir, &args).await,
        Command::Queue { command } => {
            use cli::queue::Action;
            match command {
                QueueCommand::List { node, queue, json } => {
                    cli::queue::list(&data_dir, node.as_deref(), queue.as_deref(), json).await
                }
                QueueCommand::Show { id } => cli::queue::show(&data_dir, &id).await,
                QueueCommand::Flush { id: None } => cli::queue::flush_all(&data_dir).await,
                QueueCommand::Flush { id: Some(id) } => {
                    cli::queue::act(&data_dir, &id, Action::Flush).await
                }
                QueueCommand::Hold { id } => cli::queue::act(&data_dir, &id, Action::Hold).await,
                QueueCommand::Release { id } => {
                    cli::queue::act(&data_dir, &id, Action::Release).await
                }
                QueueCommand::Bounce { id } => {
                    cli::queue::act(&data_dir, &id, Action::Bounce).await
                }
            }
        }
        Command::Failover { target } => cli::failover::failover(&data_dir, &target).await,
        Command::Failback {
            target,
            restart,
            ready_timeout,
        } => cli::failover::failback(&data_dir, &target, restart, ready_timeout).await,
        Command::Chaos(args) => cli::chaos::run(&data_dir, &args).await,
        Command::Compose {
            topology,
            output,
            image,
            flows,
            project,
            keep_subnets,
        } => {
            cli::compose::run(&cli::compose::Request {
                topology: &topology,
                output: &output,
                image: &image,
                flows: flows.as_deref(),
                project: &project,
                keep_subnets,
            })
            .await
        }
        Command::Outside { command } => match command {
            OutsideCommand::Messages { json } => {
                cli::outside::list(&data_dir, cli::outside::What::Messages, json).await
            }
            OutsideCommand::Sms { json } => {
                cli::outside::list(&data_dir, cli::outside::What::Sms, json).await
            }
        },
    }
}
