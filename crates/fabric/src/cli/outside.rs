//! `fabric outside messages|sms`: what the simulated outside world (the topology's sink nodes)
//! received from the fabric: mail handed to "remote MXes" and SMS sent to the gateway.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use store_client::{Method, StoreClient};
use topology::Role;

/// Which list to show.
#[derive(Debug, Clone, Copy)]
pub enum What {
    Messages,
    Sms,
}

impl What {
    fn path(self) -> &'static str {
        match self {
            What::Messages => "/v1/smtp/messages",
            What::Sms => "/v1/sms",
        }
    }
}

pub async fn list(data_dir: &Path, what: What, json_out: bool) -> anyhow::Result<()> {
    let (launcher, _) = super::running(data_dir)?;
    let sinks: Vec<_> = launcher.topology.nodes_with_role(Role::Sink).collect();
    if sinks.is_empty() {
        bail!("the topology has no sink node (role = \"sink\")");
    }
    let mut all = Vec::new();
    for sink in sinks {
        let addr = sink
            .service_addr("sms")
            .with_context(|| format!("sink {} has no sms port", sink.name))?;
        let client =
            StoreClient::new(format!("http://{addr}")).with_timeout(Duration::from_secs(10));
        let resp = client
            .call(Method::GET, what.path(), &[], bytes::Bytes::new())
            .await
            .with_context(|| {
                format!(
                    "asking sink {} (is it running? see `fabric status`)",
                    sink.name
                )
            })?;
        let body = resp
            .json()
            .with_context(|| format!("sink {} answered something that is not JSON", sink.name))?;
        for mut m in body["messages"].as_array().cloned().unwrap_or_default() {
            m["sink"] = Value::from(sink.name.clone());
            all.push(m);
        }
    }
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"messages": all}))?
        );
        return Ok(());
    }
    let s = |m: &Value, k: &str| match &m[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    match what {
        What::Messages => {
            println!(
                "{:<32} {:<24} {:<28} {:>8} RCPT TO",
                "ID", "TIME", "MAIL FROM", "SIZE"
            );
            for m in &all {
                let rcpts: Vec<String> = m["rcpt_to"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|r| r.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let from = s(m, "mail_from");
                println!(
                    "{:<32} {:<24} {:<28} {:>8} {}",
                    s(m, "id"),
                    s(m, "time"),
                    if from.is_empty() {
                        "<>".to_string()
                    } else {
                        from
                    },
                    s(m, "size"),
                    rcpts.join(", ")
                );
            }
        }
        What::Sms => {
            println!("{:<32} {:<24} {:<16} TEXT", "ID", "TIME", "TO");
            for m in &all {
                println!(
                    "{:<32} {:<24} {:<16} {}",
                    s(m, "id"),
                    s(m, "time"),
                    s(m, "to"),
                    s(m, "text")
                );
            }
        }
    }
    println!("{} received", all.len());
    Ok(())
}
