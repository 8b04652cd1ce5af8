//! The router in-process: the cap on open connections (over it: reset without a byte, counted) and
//! a shutdown that stops accepting and lets open flows finish.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{FakeRedirector, connect_from, round_trip};
use router::{Plan, Router};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::test]
async fn over_the_cap_connections_are_reset_and_counted() -> anyhow::Result<()> {
    let (_slot, t) = common::shifted_topology()?;
    let node = t.node("router-inet-w1").expect("the router");
    let smtp = node.service_addr("smtp").expect("smtp port");
    let router = Arc::new(Router::new(Plan::build(&t, node)?, 1));
    let listeners = router.bind().await?;
    let mut redirector = FakeRedirector::listen(
        t.node("redirector-inet-w")
            .and_then(|n| n.service_addr("smtp"))
            .expect("redirector"),
    )
    .await?;
    let shutdown = CancellationToken::new();
    let run = {
        let (router, shutdown) = (router.clone(), shutdown.clone());
        tokio::spawn(async move {
            router
                .run(
                    listeners,
                    shutdown,
                    TaskTracker::new(),
                    Duration::from_secs(5),
                )
                .await
        })
    };

    // One flow open: the cap of one is taken.
    let mut first = connect_from("127.10.9.78", smtp).await?;
    let mut greeting = [0u8; 5];
    common::timeout(first.read_exact(&mut greeting)).await??;
    assert_eq!(&greeting, b"HELLO");
    redirector.next().await?;

    common::assert_refused_at("127.10.9.78", smtp, "over the cap").await?;
    let status = router.status();
    assert_eq!(status["over_capacity"]["smtp"], 1, "{status}");
    assert_eq!(status["open"]["smtp"], 1, "{status}");

    // Shutdown: no new connections, but the open flow finishes before `run` returns.
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!run.is_finished(), "the open flow holds the drain");
    let rest = round_trip(first, b"bye\r\n").await?;
    assert!(rest.ends_with("bye\r\n"), "{rest:?}");
    common::timeout(run).await??;
    assert_eq!(router.status()["open_connections"], 0);
    assert!(
        connect_from("127.10.9.78", smtp).await.is_err(),
        "the listener is closed after shutdown"
    );
    Ok(())
}
