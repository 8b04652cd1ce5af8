//! The reading section of the bench: prepares the fabric's and Dovecot's mailboxes and runs the
//! rounds of `read_load` (the rows' mechanics live there).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use fabric::Launcher;
use store_client::StoreClient;
use topology::Role;

use crate::Args;
use crate::read_load::{self, MODES, ReadSample, Target};
use crate::summary::{Goal, Row, Summary};

fn client(node: &topology::Node) -> anyhow::Result<StoreClient> {
    let addr = node
        .service_addr("store")
        .with_context(|| format!("{} has no store port", node.name))?;
    Ok(StoreClient::new(format!("http://{addr}")).with_timeout(Duration::from_secs(60)))
}

pub async fn rows(
    args: &Args,
    launcher: &Launcher,
    dir: &Path,
    pids: &BTreeMap<String, u32>,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let t = &launcher.topology;
    let sample_user = read_load::user(0);
    let home = t
        .mailbox_store(&sample_user)
        .context("no home store for acme.example")?;
    let directory = t.directory_store().context("no directory store")?;
    let home_site = home.site.clone();
    let intranet = t
        .nodes_with_role(Role::Intranet)
        .find(|n| n.site == home_site)
        .context("no intranet node in acme.example's home site")?;
    eprintln!(
        "reading: {} mailboxes x {} messages into {} (directory {})",
        read_load::USERS,
        read_load::MESSAGES,
        home.name,
        directory.name
    );
    read_load::populate_fabric(&client(directory)?, &client(home)?).await?;
    let mut fabric_pids: Vec<u32> = [&intranet.name, &home.name, &directory.name]
        .iter()
        .filter_map(|n| pids.get(*n).copied())
        .collect();
    fabric_pids.dedup();
    let fabric = Target {
        name: format!("{} + {}", intranet.name, home.name),
        imap: intranet.service_addr("imap"),
        pop3: intranet
            .service_addr("pop3")
            .context("intranet without a pop3 port")?,
        pids: fabric_pids,
    };
    let workspace = std::env::current_dir()?;
    let tls = launcher.tls_dir();
    let master = read_load::start_dovecot(
        &workspace,
        &dir.join("dovecot"),
        &tls.join(format!("{}.pem", intranet.name)),
        &tls.join(format!("{}.key", intranet.name)),
    )?;
    let result = async {
        let targets = [fabric, read_load::dovecot_target(master)?];
        let mut rows: BTreeMap<&str, [Vec<ReadSample>; 2]> = BTreeMap::new();
        // Warm-up: Dovecot indexes its Maildirs, the fabric's caches fill; not counted.
        for target in &targets {
            read_load::run(&workspace, target, "imap-list", 4, 1.0).await?;
            read_load::run(&workspace, target, "pop3-retr", 4, 1.0).await?;
        }
        for round in 1..=args.rounds {
            eprintln!("reading round {round}/{}", args.rounds);
            for mode in MODES {
                for k in 0..2 {
                    let which = (round + k) % 2;
                    if let Some(s) = read_load::run(
                        &workspace,
                        &targets[which],
                        mode,
                        args.read_workers,
                        args.read_seconds,
                    )
                    .await?
                    {
                        rows.entry(mode).or_default()[which].push(s);
                    }
                }
            }
        }
        let medians = read_load::print_table(&targets, &rows, args.rounds, args.read_workers);
        // Issue 3: at least Dovecot's throughput, and less server CPU per unit.
        let area = "reading vs Dovecot (issue 3)";
        for m in medians {
            let unit = if m.mode == "imap-login" {
                "logins"
            } else {
                "msg"
            };
            summary.push(
                Row::new(area, format!("{} rate", m.mode), &format!("{unit}/s"))
                    .fabric(m.rate[0])
                    .against(m.rate[1], "Dovecot")
                    .goal(Goal::RatioAtLeast(1.0)),
            );
            summary.push(
                Row::new(
                    area,
                    format!("{} server CPU", m.mode),
                    &format!("us/{}", unit.trim_end_matches('s')),
                )
                .fabric(m.cpu_us[0])
                .against(m.cpu_us[1], "Dovecot")
                .goal(Goal::RatioBelow(1.0)),
            );
        }
        anyhow::Ok(())
    }
    .await;
    read_load::stop_dovecot(master);
    result
}
