//! Bad input gets a clear JSON error with the right HTTP status, is counted, and loses nothing;
//! a full disk (here: the store's quota) gets 507 and the writer is told to retry later.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use common::{metric_sum, store};
use serde_json::Value;
use store_client::{Method, StatusCode, StoreClient};
use testkit::Sandbox;
use topology::Topology;

/// The mini topology with a small body limit and a small quota on store-a.
fn limited() -> anyhow::Result<Topology> {
    let mut t = Topology::load(testkit::workspace_root().join("topology/mini.toml"))?;
    t.limits.store_max_body_bytes = 64 * 1024;
    for n in &mut t.nodes {
        if n.name == "store-a" {
            n.quota_bytes = Some(2 * 1024 * 1024);
        }
    }
    Ok(t)
}

async fn expect_error(
    c: &StoreClient,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: impl Into<Bytes>,
    status: u16,
    code: &str,
) -> anyhow::Result<Value> {
    let resp = c.raw(method.clone(), path, headers, body).await?;
    let json = resp.json().unwrap_or(Value::Null);
    assert_eq!(resp.status.as_u16(), status, "{method} {path}: {json}");
    assert_eq!(json["error"], code, "{method} {path}: {json}");
    assert!(
        json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{method} {path} explains itself: {json}"
    );
    Ok(json)
}

#[tokio::test]
async fn bad_requests_get_json_errors_and_are_counted() -> anyhow::Result<()> {
    let sandbox = Sandbox::start_topology(limited()?).await?;
    let a = store(&sandbox, "store-a");
    a.enqueue("inbound", Some("keep-me"), None, "precious")
        .await?;

    // Oversized bodies: declared, and streamed without a length.
    expect_error(
        &a,
        Method::POST,
        "/v1/queues/inbound",
        &[],
        vec![b'x'; 64 * 1024 + 1],
        413,
        "too_large",
    )
    .await?;
    let addr = sandbox
        .url("store-a", "store")
        .trim_start_matches("http://")
        .to_string();
    let chunked = raw_exchange(addr.clone(), {
        let mut req = b"POST /v1/mailboxes/ann@acme.example/INBOX HTTP/1.1\r\nHost: store\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..10 {
            req.extend_from_slice(format!("{:x}\r\n", 10 * 1024).as_bytes());
            req.extend_from_slice(&[b'y'; 10 * 1024]);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        req
    })
    .await?;
    assert!(
        chunked.starts_with("HTTP/1.1 413"),
        "a streamed body over the limit: {chunked:?}"
    );
    assert!(chunked.contains("too_large"), "{chunked:?}");

    // Malformed requests.
    expect_error(
        &a,
        Method::PUT,
        "/v1/users/ann@acme.example",
        &[],
        "{not json",
        400,
        "bad_request",
    )
    .await?;
    expect_error(
        &a,
        Method::PUT,
        "/v1/users/ann@acme.example",
        &[],
        r#"{"password_hash":"plaintext"}"#,
        400,
        "bad_request",
    )
    .await?;
    expect_error(
        &a,
        Method::PUT,
        "/v1/users/not-an-address",
        &[],
        r#"{"password_hash":"x"}"#,
        400,
        "bad_request",
    )
    .await?;
    expect_error(
        &a,
        Method::GET,
        "/v1/queues/inbound/items/abc",
        &[],
        "",
        400,
        "bad_request",
    )
    .await?;
    expect_error(
        &a,
        Method::POST,
        "/v1/queues/bad%20name",
        &[],
        "x",
        400,
        "bad_request",
    )
    .await?;
    expect_error(
        &a,
        Method::POST,
        "/v1/queues/inbound/lease?max=0",
        &[],
        "",
        400,
        "bad_request",
    )
    .await?;
    expect_error(
        &a,
        Method::POST,
        "/v1/queues/inbound/lease?max=lots",
        &[],
        "",
        400,
        "bad_request",
    )
    .await?;
    expect_error(
        &a,
        Method::POST,
        "/v1/queues/inbound",
        &[("x-fabric-meta", "[1,2]".into())],
        "x",
        400,
        "bad_request",
    )
    .await?;
    expect_error(
        &a,
        Method::POST,
        "/v1/queues/inbound",
        &[("x-fabric-message-id", "has space".into())],
        "x",
        400,
        "bad_request",
    )
    .await?;
    expect_error(
        &a,
        Method::POST,
        "/v1/mailboxes/ann@acme.example/INBOX/1/flags",
        &[],
        r#"{"set":["\\Seen"],"add":["x"]}"#,
        400,
        "bad_request",
    )
    .await?;
    // An archive's deliveries name mailboxes as an append does, and nothing else.
    expect_error(
        &a,
        Method::POST,
        "/v1/queues/inbound/items/1/archive?lease=x",
        &[],
        r#"{"to":"archive","delivery":{"mailboxes":[{"user":"ann\r\n@acme.example","folder":"INBOX"}]}}"#,
        400,
        "bad_request",
    )
    .await?;
    expect_error(
        &a,
        Method::POST,
        "/v1/queues/inbound/items/1/archive?lease=x",
        &[],
        r#"{"to":"archive","delivery":{"mailboxes":[{"user":"ann@acme.example","folder":"INBOX","body":"x"}]}}"#,
        400,
        "bad_request",
    )
    .await?;
    expect_error(
        &a,
        Method::POST,
        "/v1/replica/store-b/apply",
        &[],
        vec![0xffu8; 16],
        400,
        "bad_request",
    )
    .await?;
    // Unknown things.
    expect_error(
        &a,
        Method::GET,
        "/v1/nothing-here",
        &[],
        "",
        404,
        "not_found",
    )
    .await?;
    expect_error(&a, Method::GET, "/", &[], "", 404, "not_found").await?;
    expect_error(
        &a,
        Method::DELETE,
        "/v1/queues/inbound/items/999",
        &[],
        "",
        404,
        "no_such_item",
    )
    .await?;
    expect_error(
        &a,
        Method::GET,
        "/v1/mailboxes/nobody@acme.example/INBOX",
        &[],
        "",
        404,
        "not_found",
    )
    .await?;
    expect_error(
        &a,
        Method::POST,
        "/v1/replica/store-zz/apply",
        &[],
        "",
        404,
        "no_replica",
    )
    .await?;
    expect_error(
        &a,
        Method::GET,
        "/v1/queues?origin=store-zz",
        &[],
        "",
        404,
        "no_replica",
    )
    .await?;
    expect_error(
        &a,
        Method::PATCH,
        "/v1/queues/inbound",
        &[],
        "",
        405,
        "bad_request",
    )
    .await?;

    // Garbage that is not HTTP at all: the store answers 400 and closes, and keeps serving.
    let garbage = raw_exchange(addr, b"\x16\x03\x01 GARBAGE \xff\xfe\r\n\r\n".to_vec()).await?;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage:?}");

    // Nothing was lost or broken, and every refusal was counted.
    assert_eq!(&a.get_item("inbound", 1, None).await?[..], b"precious");
    let health = StoreClient::new(sandbox.admin_url("store-a"))
        .raw(Method::GET, "/health", &[], Bytes::new())
        .await?;
    assert_eq!(health.status, StatusCode::OK);
    let m = common::metrics(&sandbox, "store-a").await?;
    assert!(
        metric_sum(&m, "fabric_store_errors_total", &[("code", "too_large")]) >= 1.0,
        "{m}"
    );
    assert!(metric_sum(&m, "fabric_store_errors_total", &[("code", "bad_request")]) >= 10.0);
    assert!(metric_sum(&m, "fabric_store_requests_total", &[("status", "404")]) >= 5.0);
    Ok(())
}

/// Sends raw bytes on a new connection and returns what comes back before the store closes it.
async fn raw_exchange(addr: String, request: Vec<u8>) -> anyhow::Result<String> {
    Ok(
        tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            // The store may answer and close before reading everything; that is fine.
            let _ = s.write_all(&request);
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        })
        .await??,
    )
}

#[tokio::test]
async fn a_full_store_answers_507_and_keeps_what_it_had() -> anyhow::Result<()> {
    // A queue no node of the fabric consumes: the transfer server leases `inbound` itself.
    const QUEUE: &str = "fill";
    let sandbox = Sandbox::start_topology(limited()?).await?;
    let a = store(&sandbox, "store-a");
    let mut acked = Vec::new();
    let mut full = None;
    for i in 0..200 {
        let id = format!("fill-{i}");
        match a
            .enqueue(QUEUE, Some(&id), None, vec![b'f'; 60 * 1024])
            .await
        {
            Ok(_) => acked.push(id),
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let err = full.ok_or_else(|| anyhow::anyhow!("a 2 MiB quota never filled up"))?;
    assert_eq!(
        err.status(),
        Some(StatusCode::INSUFFICIENT_STORAGE),
        "{err}"
    );
    assert_eq!(err.code(), Some("storage_full"));
    assert!(err.is_retryable());
    let raw = a
        .raw(Method::POST, "/v1/queues/fill", &[], vec![b'f'; 60 * 1024])
        .await?;
    assert_eq!(raw.status.as_u16(), 507);
    assert!(
        raw.header("retry-after").is_some(),
        "the writer is told when to retry"
    );
    assert!(
        acked.len() >= 10,
        "only {} writes fitted before the quota",
        acked.len()
    );

    // Still alive, still serving what it had, on both copies.
    let held: Vec<String> = a
        .list_queue(QUEUE, None)
        .await?
        .into_iter()
        .map(|i| i.message_id)
        .collect();
    assert_eq!(held, acked);
    let b = store(&sandbox, "store-b");
    assert_eq!(
        b.list_queue(QUEUE, Some("store-a")).await?.len(),
        acked.len()
    );
    // Small writes that fit in the last free pages may still go through; freeing space lets big ones in.
    let leased = a.lease(QUEUE, 5, Duration::from_secs(60)).await?;
    assert_eq!(leased.len(), 5, "five items to free");
    for l in &leased {
        a.ack(QUEUE, l.id, &l.lease).await?;
    }
    testkit::wait_until(
        "a write to fit after freeing space",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            a.enqueue(QUEUE, Some("after-free"), None, vec![b'g'; 30 * 1024])
                .await
                .is_ok()
        },
    )
    .await?;
    let m = common::metrics(&sandbox, "store-a").await?;
    assert!(metric_sum(&m, "fabric_store_storage_full_total", &[]) >= 1.0);
    Ok(())
}
