//! `fabric user ...` and `fabric blocklist ...`: the directory of users and the sender blocklist,
//! kept on the fabric's directory store (the first store of the topology) and mirrored like all data.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use argon2::password_hash::{PasswordHasher, SaltString};
use serde_json::{Value, json};
use store_client::{Method, StoreClient, segment};

/// How a user's new-mail notification goes out.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Notify {
    None,
    Sms,
    Alternate,
}

impl Notify {
    fn as_str(self) -> &'static str {
        match self {
            Notify::None => "none",
            Notify::Sms => "sms",
            Notify::Alternate => "alternate",
        }
    }
}

/// What `fabric user add` and `passwd` were told about the password.
pub struct PasswordSource {
    pub password: Option<String>,
    pub stdin: bool,
}

fn directory(data_dir: &Path) -> anyhow::Result<StoreClient> {
    let (launcher, _) = super::running(data_dir)?;
    let store = launcher
        .topology
        .directory_store()
        .context("the topology has no store to keep the directory")?;
    let addr = store
        .service_addr("store")
        .context("the directory store has no store port")?;
    Ok(StoreClient::new(format!("http://{addr}")).with_timeout(Duration::from_secs(30)))
}

/// An argon2id hash (PHC string) of `password`, with a fresh random salt.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    // 16 bytes from the OS's generator (a v4 UUID's randomness) make the salt.
    let salt = SaltString::encode_b64(uuid::Uuid::new_v4().as_bytes())
        .map_err(|e| anyhow::anyhow!("making a salt: {e}"))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

fn read_password(source: &PasswordSource) -> anyhow::Result<String> {
    let password = match (&source.password, source.stdin) {
        (Some(p), false) => p.clone(),
        (None, true) => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s.trim_end_matches(['\r', '\n']).to_string()
        }
        (Some(_), true) => bail!("give --password or --password-stdin, not both"),
        (None, false) => bail!("a password is needed: --password P or --password-stdin"),
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}

fn check_address(address: &str) -> anyhow::Result<String> {
    let a = address.trim().to_ascii_lowercase();
    match a.split_once('@') {
        Some((l, d)) if !l.is_empty() && d.contains('.') => Ok(a),
        _ => bail!("{address:?} is not a mail address"),
    }
}

pub async fn user_add(
    data_dir: &Path,
    address: &str,
    password: &PasswordSource,
    alternate: Option<String>,
    sms: Option<String>,
    notify: Notify,
) -> anyhow::Result<()> {
    let address = check_address(address)?;
    let (launcher, _) = super::running(data_dir)?;
    let domain = address.split_once('@').map(|(_, d)| d).unwrap_or("");
    if !launcher.topology.is_customer_domain(domain) {
        bail!("{domain} is not a customer domain of this fabric");
    }
    let store = directory(data_dir)?;
    let hash = hash_password(&read_password(password)?)?;
    let user = json!({
        "password_hash": hash,
        "alternate": alternate,
        "sms": sms,
        "notify": notify.as_str(),
    });
    store.put_user(&address, &user).await?;
    println!("user {address} saved (notify: {})", notify.as_str());
    Ok(())
}

pub async fn user_passwd(
    data_dir: &Path,
    address: &str,
    password: &PasswordSource,
) -> anyhow::Result<()> {
    let address = check_address(address)?;
    let store = directory(data_dir)?;
    let Some(mut user) = store.get_user(&address, None).await? else {
        bail!("no user {address}");
    };
    user["password_hash"] = Value::String(hash_password(&read_password(password)?)?);
    if let Some(o) = user.as_object_mut() {
        o.remove("address");
        o.remove("updated_at_ms");
    }
    store.put_user(&address, &user).await?;
    println!("password of {address} changed");
    Ok(())
}

pub async fn user_remove(data_dir: &Path, address: &str) -> anyhow::Result<()> {
    let address = check_address(address)?;
    let store = directory(data_dir)?;
    store
        .call(
            Method::DELETE,
            &format!("/v1/users/{}", segment(&address)),
            &[],
            bytes::Bytes::new(),
        )
        .await?;
    println!("user {address} removed from the directory; the mail in its mailbox is kept");
    Ok(())
}

pub async fn user_list(data_dir: &Path, json_out: bool) -> anyhow::Result<()> {
    let store = directory(data_dir)?;
    let users = store.users(None).await?;
    if json_out {
        // Never print password hashes, even to scripts.
        let list: Vec<Value> = users["users"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|u| json!({"address": u["address"], "alternate": u["alternate"], "sms": u["sms"], "notify": u["notify"]}))
                    .collect()
            })
            .unwrap_or_default();
        println!("{}", serde_json::to_string_pretty(&json!({"users": list}))?);
        return Ok(());
    }
    println!("{:<32} {:<10} {:<16} ALTERNATE", "ADDRESS", "NOTIFY", "SMS");
    for u in users["users"].as_array().into_iter().flatten() {
        let s = |k: &str| u[k].as_str().unwrap_or("-").to_string();
        println!(
            "{:<32} {:<10} {:<16} {}",
            s("address"),
            s("notify"),
            s("sms"),
            s("alternate")
        );
    }
    Ok(())
}

pub async fn blocklist_add(data_dir: &Path, entry: &str) -> anyhow::Result<()> {
    let entry = entry.trim().to_ascii_lowercase();
    let store = directory(data_dir)?;
    store
        .call(
            Method::PUT,
            &format!("/v1/blocklist/{}", segment(&entry)),
            &[],
            bytes::Bytes::new(),
        )
        .await?;
    println!("{entry} is on the blocklist");
    Ok(())
}

pub async fn blocklist_remove(data_dir: &Path, entry: &str) -> anyhow::Result<()> {
    let entry = entry.trim().to_ascii_lowercase();
    let store = directory(data_dir)?;
    store
        .call(
            Method::DELETE,
            &format!("/v1/blocklist/{}", segment(&entry)),
            &[],
            bytes::Bytes::new(),
        )
        .await?;
    println!("{entry} is off the blocklist");
    Ok(())
}

pub async fn blocklist_list(data_dir: &Path) -> anyhow::Result<()> {
    let store = directory(data_dir)?;
    let list = store.blocklist(None).await?;
    for e in list["entries"].as_array().into_iter().flatten() {
        println!("{}", e["entry"].as_str().unwrap_or(""));
    }
    Ok(())
}

/// Creates the topology's demo mailboxes that do not exist yet, with fresh passwords, and prints
/// them (once: a restart on the same data keeps the passwords already given).
pub async fn create_demo_users(data_dir: &Path) -> anyhow::Result<()> {
    let (launcher, _) = super::running(data_dir)?;
    if launcher.topology.demo_users.is_empty() {
        return Ok(());
    }
    let store = directory(data_dir)?;
    println!();
    for address in &launcher.topology.demo_users {
        let address = check_address(address)?;
        if store.get_user(&address, None).await?.is_some() {
            println!("demo mailbox {address:<28} (exists; password unchanged)");
            continue;
        }
        let password: String = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let user = json!({"password_hash": hash_password(&password)?, "notify": "none"});
        store.put_user(&address, &user).await?;
        println!("demo mailbox {address:<28} password {password}");
    }
    Ok(())
}
