//! Runs the fault schedule against a backend on the real timeline: each fault injects, holds, heals
//! and waits until its nodes are ready, as its own future of one task. Rules 2 to 4 of the schedule
//! are enforced again here (a fault waits while a conflicting one has not recovered, and a store
//! fault waits until every store is in sync with its mirrors), since recoveries take the time they
//! take.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde::Serialize;
use store_client::StoreClient;
use topology::{Role, Topology};

use super::backend::{Backend, NodeState};
use super::schedule::{Fault, Kind};

/// How long a fault may wait for its turn before it is skipped.
const TURN_WAIT: Duration = Duration::from_secs(240);
/// How long a store fault waits for the stores to be in sync.
const SYNC_WAIT: Duration = Duration::from_secs(90);

/// What happened to one fault, in seconds from the campaign's start.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRun {
    #[serde(flatten)]
    pub fault: Fault,
    /// When it was injected (`None`: skipped).
    pub injected: Option<f64>,
    /// When the heal began (SIGCONT, start).
    pub healed: Option<f64>,
    /// When every node answered `/ready` again.
    pub ready: Option<f64>,
    /// Why it was skipped, or what went wrong.
    pub note: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Pending,
    /// Its time has come; it waits for its turn.
    Waiting,
    Active,
    Done,
}

struct Runner<'a, B: Backend> {
    backend: &'a B,
    t0: Instant,
    max_concurrent: usize,
    ready_timeout: Duration,
    phases: RefCell<Vec<Phase>>,
    faults: &'a [Fault],
}

/// Runs every fault of `faults` (ordered by start) and returns what happened to each.
pub async fn run<B: Backend>(
    backend: &B,
    faults: &[Fault],
    t0: Instant,
    max_concurrent: usize,
    ready_timeout: Duration,
) -> Vec<FaultRun> {
    let runner = Runner {
        backend,
        t0,
        max_concurrent,
        ready_timeout,
        phases: RefCell::new(vec![Phase::Pending; faults.len()]),
        faults,
    };
    join_all((0..faults.len()).map(|i| runner.one(i))).await
}

/// Seconds since `t0`.
pub fn secs(t0: Instant) -> f64 {
    (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0
}

impl<B: Backend> Runner<'_, B> {
    /// Takes the turn of fault `i` if no conflicting fault is active, there is room, and no earlier
    /// fault still waits for its turn (first come, first served: a fault that needs the fabric to
    /// itself, a partition or a site down, cannot starve the ones planned before it, nor they it).
    fn try_activate(&self, i: usize) -> bool {
        let mut phases = self.phases.borrow_mut();
        if phases[..i].contains(&Phase::Waiting) {
            return false;
        }
        let active: Vec<usize> = (0..phases.len())
            .filter(|j| phases[*j] == Phase::Active)
            .collect();
        let free = active.len() < self.max_concurrent
            && active
                .iter()
                .all(|j| !self.faults[i].conflicts(&self.faults[*j]));
        if free {
            phases[i] = Phase::Active;
        }
        free
    }

    async fn one(&self, i: usize) -> FaultRun {
        let fault = &self.faults[i];
        let mut run = FaultRun {
            fault: fault.clone(),
            injected: None,
            healed: None,
            ready: None,
            note: None,
        };
        tokio::time::sleep_until((self.t0 + Duration::from_secs_f64(fault.at)).into()).await;
        let asked = Instant::now();
        self.phases.borrow_mut()[i] = Phase::Waiting;
        while !self.try_activate(i) {
            if asked.elapsed() > TURN_WAIT {
                run.note = Some(format!("skipped: no turn within {TURN_WAIT:?}"));
                self.phases.borrow_mut()[i] = Phase::Done;
                return run;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if (fault.role == "store" || fault.kind.exclusive())
            && !stores_in_sync(self.backend.topology(), SYNC_WAIT).await
        {
            eprintln!(
                "chaos: #{} waited {SYNC_WAIT:?} for the stores to be in sync; going ahead",
                fault.id
            );
            run.note = Some("stores were not all in sync at injection".into());
        }
        let mut not_running = Vec::new();
        for n in &fault.nodes {
            if self.backend.state(n).await != NodeState::Running {
                not_running.push(n);
            }
        }
        if !fault.kind.exclusive() && !not_running.is_empty() {
            run.note = Some(format!("skipped: {not_running:?} not running"));
            self.phases.borrow_mut()[i] = Phase::Done;
            return run;
        }
        run.injected = Some(secs(self.t0));
        eprintln!(
            "chaos: t+{:.1}s #{} {} {}",
            secs(self.t0),
            fault.id,
            fault.kind.as_str(),
            fault.target
        );
        let result = self.inject_and_heal(fault, &mut run).await;
        if let Err(e) = result {
            eprintln!("chaos: #{} {}: {e:#}", fault.id, fault.target);
            run.note = Some(format!("{e:#}"));
        } else {
            run.ready = Some(secs(self.t0));
        }
        self.phases.borrow_mut()[i] = Phase::Done;
        run
    }

    async fn inject_and_heal(&self, fault: &Fault, run: &mut FaultRun) -> anyhow::Result<()> {
        let b = self.backend;
        let hold = Duration::from_secs_f64(fault.hold);
        match fault.kind {
            Kind::Partition | Kind::ZoneCut => {
                b.cut(&fault.legs).await?;
                tokio::time::sleep(hold).await;
                run.healed = Some(secs(self.t0));
                b.mend(&fault.legs).await?;
                if !stores_in_sync(b.topology(), SYNC_WAIT).await {
                    anyhow::bail!("the stores were not in sync {SYNC_WAIT:?} after the mend");
                }
                Ok(())
            }
            Kind::Kill | Kind::SiteDown => {
                let mut targets = Vec::new();
                for n in &fault.nodes {
                    if b.state(n).await != NodeState::Down {
                        targets.push(n);
                    }
                }
                for r in join_all(targets.iter().map(|n| b.kill(n))).await {
                    r?;
                }
                tokio::time::sleep(hold).await;
                run.healed = Some(secs(self.t0));
                self.start_all(fault).await
            }
            Kind::Pause => {
                let node = &fault.nodes[0];
                b.pause(node).await?;
                tokio::time::sleep(hold).await;
                run.healed = Some(secs(self.t0));
                b.resume(node).await?;
                b.wait_ready(node, self.ready_timeout).await
            }
            Kind::Restart => {
                let node = &fault.nodes[0];
                b.terminate(node).await?;
                run.healed = Some(secs(self.t0));
                b.start(node, self.ready_timeout).await
            }
        }
    }

    /// Starts the fault's nodes that are down, stores first (everything else reads or writes them).
    async fn start_all(&self, fault: &Fault) -> anyhow::Result<()> {
        let t = self.backend.topology();
        let is_store = |n: &String| t.node(n).is_some_and(|n| n.role() == Role::Store);
        for stores_now in [true, false] {
            let mut batch = Vec::new();
            for n in fault.nodes.iter().filter(|n| is_store(n) == stores_now) {
                if self.backend.state(n).await == NodeState::Down {
                    batch.push(n);
                }
            }
            for r in join_all(
                batch
                    .iter()
                    .map(|n| self.backend.start(n, self.ready_timeout)),
            )
            .await
            {
                r?;
            }
        }
        Ok(())
    }
}

/// Every node running again: SIGCONT to the frozen, start for the dead (stores first). Returns the
/// nodes it had to heal and what failed.
pub async fn heal_all<B: Backend>(
    backend: &B,
    ready_timeout: Duration,
) -> (Vec<String>, Vec<String>) {
    let t = backend.topology();
    let mut healed = Vec::new();
    let mut errors = Vec::new();
    for stores_now in [true, false] {
        let mut batch: Vec<(String, NodeState)> = Vec::new();
        for n in t
            .nodes
            .iter()
            .filter(|n| (n.role() == Role::Store) == stores_now)
        {
            let state = backend.state(&n.name).await;
            if state != NodeState::Running {
                batch.push((n.name.clone(), state));
            }
        }
        let results = join_all(batch.iter().map(|(n, s)| async move {
            match s {
                NodeState::Paused => {
                    backend.resume(n).await?;
                    backend.wait_ready(n, ready_timeout).await
                }
                _ => backend.start(n, ready_timeout).await,
            }
        }))
        .await;
        for ((n, _), r) in batch.iter().zip(results) {
            healed.push(n.clone());
            if let Err(e) = r {
                errors.push(format!("{n}: {e:#}"));
            }
        }
    }
    (healed, errors)
}

/// Waits until every store answers, none is degraded and no mirror link is down.
pub async fn stores_in_sync(t: &Topology, timeout: Duration) -> bool {
    let start = Instant::now();
    let stores: Vec<StoreClient> = t
        .nodes_with_role(Role::Store)
        .filter_map(StoreClient::for_node)
        .map(|c| c.with_timeout(Duration::from_secs(2)))
        .collect();
    loop {
        let mut all = true;
        for s in &stores {
            let ok = match s.replication().await {
                Ok(r) => {
                    r["degraded"] == false
                        && r["mirrors"]
                            .as_array()
                            .is_some_and(|m| m.iter().all(|l| l["state"] != "down"))
                }
                Err(_) => false,
            };
            all &= ok;
        }
        if all {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
