//! Instances with leader election: at most one serves at any moment, whatever the timing, and a
//! standby takes over when the leader dies, hands over or freezes.
//!
//! Every check samples each instance's `/readyz` and the Lease itself, and fails on the first
//! sample where two instances serve, or one serves without holding the Lease.

mod common;

use common::{CpuLoad, Frozen, Operator, TestEnv, value, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use mxcred_operator::shell::leader::{LEASE_DURATION, RENEW_DEADLINE, RENEW_PERIOD};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::sync::RwLock;

/// Taken for writing by the tests that freeze the API server or load every core, which the
/// others share: a test waiting for a reconcile must not run beside a CPU load meant to starve.
static API_SERVER: RwLock<()> = RwLock::const_new(());

/// The longest a round may take to settle on one leader, on a loaded machine.
const SETTLE: Duration = Duration::from_secs(45);
/// Consecutive samples with exactly one instance serving that make a round settled.
const STEADY: usize = 10;

fn elected(env: &TestEnv, lease: &str, pod: &str) -> Operator {
    env.start_operator_as(
        "http://127.0.0.1:9",
        &[
            "--leader-elect",
            "--lease-name",
            lease,
            "--lease-namespace",
            "mxcred-system",
        ],
        &[("POD_NAME", pod)],
    )
}

async fn holder(env: &TestEnv, lease: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "mxcred-system");
    leases.get(lease).await.ok()?.spec?.holder_identity
}

/// Waits until one instance serves and the other stands by (both ready); returns the index of
/// the one serving.
async fn the_one_serving(ops: [&Operator; 2]) -> usize {
    wait_for(Duration::from_secs(40), || async {
        let roles = [ops[0].readyz().await, ops[1].readyz().await];
        match roles.each_ref().map(|r| r.as_deref()) {
            [Some("serving"), Some("standby")] => Some(0),
            [Some("standby"), Some("serving")] => Some(1),
            _ => None,
        }
    })
    .await
    .expect("one instance serves, the other stands by")
}

async fn serves(op: &Operator) -> bool {
    op.readyz().await.as_deref() == Some("serving")
}

/// Samples the roles of a group of instances sharing one Lease, asserting the guarantee at each
/// sample.
struct Sampler {
    leases: Api<Lease>,
    lease: String,
    names: Vec<String>,
    urls: Vec<String>,
    http: reqwest::Client,
    samples: usize,
    /// Answers that did not come in time. A frozen instance gives none; one that is merely slow
    /// would hide what it serves, so the count is reported beside the samples.
    unanswered: usize,
}

impl Sampler {
    async fn new(env: &TestEnv, lease: &str, names: &[String], ops: &[Operator]) -> Sampler {
        let mut urls = vec![];
        for op in ops {
            urls.push(op.readyz_url().await);
        }
        Sampler {
            leases: Api::namespaced(env.client.clone(), "mxcred-system"),
            lease: lease.into(),
            names: names.to_vec(),
            urls,
            // A frozen instance answers nothing; it serves nothing either.
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(500))
                .build()
                .unwrap(),
            samples: 0,
            unanswered: 0,
        }
    }

    /// One sample: each instance's role (`None` when it does not answer or is not ready), then
    /// the Lease's holder. A holder read after a role can differ from the one the role was
    /// served under only if the Lease changed hands in between, which takes the 4 s between a
    /// leader's renew deadline and the earliest take-over.
    async fn sample(&mut self) -> Vec<Option<String>> {
        let http = &self.http;
        let answers = futures::future::join_all(self.urls.iter().map(|url| async move {
            let response = http.get(url).send().await.map_err(|e| e.is_timeout())?;
            if !response.status().is_success() {
                return Ok(None);
            }
            Ok(response.text().await.ok())
        }))
        .await;
        self.unanswered += answers.iter().filter(|a| *a == &Err(true)).count();
        let roles: Vec<Option<String>> = answers.into_iter().map(|a| a.ok().flatten()).collect();
        let read = tokio::time::timeout(Duration::from_millis(300), self.leases.get(&self.lease));
        // None while the API server does not answer: only the roles are checked then.
        let holder = match read.await {
            Ok(Ok(lease)) => Some(lease.spec.and_then(|s| s.holder_identity)),
            _ => None,
        };
        let serving: Vec<&String> = self
            .names
            .iter()
            .zip(&roles)
            .filter(|(_, role)| role.as_deref() == Some("serving"))
            .map(|(name, _)| name)
            .collect();
        assert!(
            serving.len() <= 1,
            "sample {}: {serving:?} serve at once; roles {roles:?}, holder {holder:?}",
            self.samples
        );
        if let ([one], Some(holder)) = (serving.as_slice(), &holder) {
            assert_eq!(
                holder.as_ref(),
                Some(*one),
                "sample {}: {one} serves without holding the lease; roles {roles:?}",
                self.samples
            );
        }
        self.samples += 1;
        roles
    }

    /// Samples until exactly one instance of `live` serves and every other one in `live` stands
    /// by, for `STEADY` samples in a row; returns the index of the one serving.
    async fn settle(&mut self, live: &[bool], within: Duration) -> usize {
        self.settle_since(live, within).await.0
    }

    /// As [`Self::settle`], also returning when the one serving was first seen serving (the
    /// end of that sample: it served by then).
    async fn settle_since(&mut self, live: &[bool], within: Duration) -> (usize, Instant) {
        let deadline = Instant::now() + within;
        let mut steady = (usize::MAX, 0);
        let mut since = Instant::now();
        loop {
            let roles = self.sample().await;
            let sampled = Instant::now();
            let serving = roles.iter().position(|r| r.as_deref() == Some("serving"));
            let others_stand_by = roles
                .iter()
                .enumerate()
                .all(|(i, r)| !live[i] || Some(i) == serving || r.as_deref() == Some("standby"));
            // One outside `live` may still serve (a leader handles SIGTERM when it next runs):
            // that is no new leader yet.
            steady = match serving.filter(|i| live[*i]) {
                Some(i) if others_stand_by && steady.0 == i => (i, steady.1 + 1),
                Some(i) if others_stand_by => {
                    since = sampled;
                    (i, 1)
                }
                _ => (usize::MAX, 0),
            };
            if steady.1 >= STEADY {
                return (steady.0, since);
            }
            assert!(
                Instant::now() < deadline,
                "no single leader among {:?} after {within:?}; roles {roles:?}",
                self.names
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Samples for `period`; returns the roles of the last sample.
    async fn sample_for(&mut self, period: Duration) -> Vec<Option<String>> {
        let end = Instant::now() + period;
        loop {
            let roles = self.sample().await;
            if Instant::now() >= end {
                return roles;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Rounds of the stress test: `MXCRED_LEADER_ROUNDS`, or a number that keeps `make test` short.
fn rounds() -> usize {
    std::env::var("MXCRED_LEADER_ROUNDS")
        .ok()
        .map(|r| r.parse().expect("MXCRED_LEADER_ROUNDS is a number"))
        .unwrap_or(10)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[tokio::test]
async fn instances_started_together_never_serve_at_once() {
    let _alone = API_SERVER.write().await;
    let env = TestEnv::new("race").await;
    let _load = CpuLoad::start(cores());
    let (rounds, started) = (rounds(), Instant::now());
    let (mut samples, mut unanswered) = (0, 0);
    for round in 0..rounds {
        // Two and three instances in turn, started back to back against a new Lease.
        let n = 2 + round % 2;
        let lease = format!("race-{round}");
        let names: Vec<String> = (0..n).map(|i| format!("race-{round}-{i}")).collect();
        let ops: Vec<Operator> = names.iter().map(|pod| elected(&env, &lease, pod)).collect();
        let mut sampler = Sampler::new(&env, &lease, &names, &ops).await;
        let mut live = vec![true; n];
        let leader = sampler.settle(&live, SETTLE).await;
        sampler.sample_for(Duration::from_millis(500)).await;

        // The leader hands over on SIGTERM; the others race for the released Lease.
        ops[leader].signal("TERM");
        live[leader] = false;
        let next = sampler.settle(&live, SETTLE).await;
        assert_ne!(next, leader);
        sampler.sample_for(Duration::from_millis(500)).await;
        samples += sampler.samples;
        unanswered += sampler.unanswered;
    }
    println!(
        "leader stress: {rounds} rounds, {samples} samples, 0 overlaps, {unanswered} answers timed out, in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_frozen_leader_stops_serving_and_serves_again_only_after_renewing() {
    let _shared = API_SERVER.read().await;
    let env = TestEnv::new("frozen").await;
    let _load = CpuLoad::start(1);
    let names: Vec<String> = ["pod-g", "pod-h", "pod-i"].map(String::from).into();
    let ops: Vec<Operator> = names
        .iter()
        .map(|pod| elected(&env, "frozen", pod))
        .collect();
    let mut sampler = Sampler::new(&env, "frozen", &names, &ops).await;
    let all = [true; 3];
    let first = sampler.settle(&all, SETTLE).await;

    // Frozen past its renew deadline but not past the lease duration: woken, it stops serving,
    // and serves again only if it renews the Lease before anyone else can take it.
    let frozen = Frozen::freeze(ops[first].pid());
    sampler.sample_for(RENEW_DEADLINE + RENEW_PERIOD).await;
    drop(frozen);
    let second = sampler.settle(&all, SETTLE).await;
    let logs = ops[first].logs();
    assert!(
        logs.contains("could not renew the lease in time"),
        "the woken leader did not stop"
    );
    if second == first {
        assert_eq!(logs.matches("holding the lease: serving").count(), 2);
    }

    // Frozen past the lease duration: another instance takes over, and the woken one never
    // serves beside it.
    const CONNECTIONS: usize = 20;
    let (http, url) = (reqwest::Client::new(), ops[second].readyz_url().await);
    let open = (0..CONNECTIONS).map(|_| async { http.get(&url).send().await.unwrap() });
    futures::future::join_all(open).await;
    let frozen_at = Instant::now();
    let frozen = Frozen::freeze(ops[second].pid());
    let mut others = all;
    others[second] = false;
    let (third, serving) = sampler
        .settle_since(&others, Duration::from_secs(LEASE_DURATION) + SETTLE)
        .await;
    println!(
        "fail-over from a frozen leader: {:?} (lease duration {LEASE_DURATION} s)",
        serving - frozen_at
    );
    sampler
        .sample_for(Duration::from_secs(25).saturating_sub(frozen_at.elapsed()))
        .await;
    // Requests queued on open connections while it is frozen are the first it answers on
    // waking, perhaps before its leader task has run: not one may say it serves.
    let queued: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move { http.get(url).send().await?.text().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(frozen);
    for answer in futures::future::join_all(queued).await {
        let answer = answer.unwrap();
        assert_ne!(
            answer.as_deref().ok(),
            Some("serving"),
            "answered on waking"
        );
    }
    sampler.sample_for(Duration::from_secs(3)).await;
    assert_eq!(sampler.settle(&all, SETTLE).await, third);
    assert!(
        ops[second]
            .logs()
            .contains("could not renew the lease in time")
            || ops[second].logs().contains("lost the lease"),
        "the woken leader did not stop"
    );
    println!(
        "frozen leader: {} samples, 0 overlaps, {} answers timed out (the frozen one's)",
        sampler.samples, sampler.unanswered
    );
}

#[tokio::test]
async fn a_leader_that_cannot_renew_stops_serving_before_its_lease_expires() {
    // Freezes the API server: nothing else may use it meanwhile.
    let _alone = API_SERVER.write().await;
    let env = TestEnv::new("stall").await;
    let names: Vec<String> = ["pod-j", "pod-k"].map(String::from).into();
    let ops: Vec<Operator> = names
        .iter()
        .map(|pod| elected(&env, "stall", pod))
        .collect();
    let mut sampler = Sampler::new(&env, "stall", &names, &ops).await;
    let all = [true; 2];
    let leader = sampler.settle(&all, SETTLE).await;

    let stalled = Instant::now();
    let frozen = Frozen::freeze(env.cp.apiserver_pid());
    // Its last successful renewal started before the stall; a second covers the sampling.
    let bound = RENEW_DEADLINE + Duration::from_secs(1);
    loop {
        let roles = sampler.sample().await;
        if roles[leader].as_deref() == Some("standby") {
            break;
        }
        assert!(
            stalled.elapsed() < bound,
            "still {roles:?} {bound:?} into the stall"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "stood down {:?} after the API server stalled (renew deadline {RENEW_DEADLINE:?})",
        stalled.elapsed()
    );
    sampler.sample_for(Duration::from_secs(2)).await;
    drop(frozen);
    sampler.settle(&all, SETTLE).await;
    println!(
        "API server stall: {} samples, 0 overlaps, {} answers timed out",
        sampler.samples, sampler.unanswered
    );
}

#[tokio::test]
async fn one_leader_and_fail_over_when_it_dies() {
    let _shared = API_SERVER.read().await;
    let env = TestEnv::new("failover").await;
    let mut ops = [
        elected(&env, "failover", "pod-a"),
        elected(&env, "failover", "pod-b"),
    ];
    env.put_source("raw", &[("token", "first")]).await;
    env.put_credential("c", json!({"sourceRef": {"name": "raw"}}))
        .await;
    env.wait_reason("c", "Ready", "Synced").await;

    let leader = the_one_serving([&ops[0], &ops[1]]).await;
    let standby = 1 - leader;
    let names = ["pod-a", "pod-b"];
    assert_eq!(
        holder(&env, "failover").await.as_deref(),
        Some(names[leader])
    );
    assert!(
        !ops[standby].logs().contains("\"reconciled\""),
        "the standby reconciled"
    );

    ops[leader].kill();
    let killed = Instant::now();
    wait_for(Duration::from_secs(LEASE_DURATION + 20), || async {
        (holder(&env, "failover").await.as_deref() == Some(names[standby])).then_some(())
    })
    .await
    .expect("the standby takes the lease");
    let taken = killed.elapsed();
    wait_for(Duration::from_secs(20), || async {
        serves(&ops[standby]).await.then_some(())
    })
    .await
    .expect("the standby serves");
    let serving = killed.elapsed();
    println!(
        "fail-over after SIGKILL: lease taken after {taken:?}, serving after {serving:?} (lease duration {LEASE_DURATION} s)"
    );
    // Within the lease duration of the last renewal, which came before the kill; the second
    // is for the requests of a loaded machine.
    assert!(taken < Duration::from_secs(LEASE_DURATION + 1), "{taken:?}");

    // The new leader serves: a rotation reaches the target.
    env.put_source("raw", &[("token", "second")]).await;
    env.wait_secret("c", "rotated", |s| {
        value(s, "MENDIX_TOKEN").as_deref() == Some("second")
    })
    .await;
}

#[tokio::test]
async fn sigterm_drains_quickly_and_releases_the_lease() {
    let _shared = API_SERVER.read().await;
    let env = TestEnv::new("sigterm").await;
    let mut ops = [
        elected(&env, "sigterm", "pod-c"),
        elected(&env, "sigterm", "pod-d"),
    ];
    let leader = the_one_serving([&ops[0], &ops[1]]).await;
    let standby = 1 - leader;

    let names = ["pod-c", "pod-d"];
    assert_eq!(
        holder(&env, "sigterm").await.as_deref(),
        Some(names[leader])
    );
    let exit = ops[leader].terminate();
    println!("exit after SIGTERM: {exit:?}");
    assert!(exit < Duration::from_secs(5), "{exit:?}");
    // Released on the way out: no holder, rather than a stale one until expiry.
    let released = Instant::now();
    let now = holder(&env, "sigterm").await;
    assert!(
        now.is_none() || now.as_deref() == Some(names[standby]),
        "the lease was not released: {now:?}"
    );
    // A standby polls the Lease every second.
    wait_for(Duration::from_secs(10), || async {
        serves(&ops[standby]).await.then_some(())
    })
    .await
    .expect("the standby takes over");
    let took = released.elapsed();
    println!("take-over after SIGTERM: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(
        holder(&env, "sigterm").await.as_deref(),
        Some(names[standby])
    );
}

#[tokio::test]
async fn a_leader_keeps_its_lease_past_the_lease_duration() {
    let _shared = API_SERVER.read().await;
    let env = TestEnv::new("renew").await;
    let ops = [
        elected(&env, "renew", "pod-e"),
        elected(&env, "renew", "pod-f"),
    ];
    let leader = the_one_serving([&ops[0], &ops[1]]).await;
    let names = ["pod-e", "pod-f"];
    tokio::time::sleep(Duration::from_secs(LEASE_DURATION + 10)).await;
    assert_eq!(the_one_serving([&ops[0], &ops[1]]).await, leader);
    assert_eq!(holder(&env, "renew").await.as_deref(), Some(names[leader]));
    let standby = &ops[1 - leader];
    assert!(
        !standby.logs().contains("holding the lease"),
        "the standby took the lease while the leader held it"
    );
}

/// What the election rests on: a patch carrying an outdated `resourceVersion` is refused, so of
/// two instances that decided on the same record only the first write lands.
#[tokio::test]
async fn a_write_decided_on_an_outdated_lease_is_refused() {
    let _shared = API_SERVER.read().await;
    let env = TestEnv::new("precondition").await;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "mxcred-system");
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "precondition"}})).unwrap();
    let created = leases
        .create(&kube::api::PostParams::default(), &lease)
        .await
        .unwrap();
    let decided_on = created.metadata.resource_version.clone();
    let take = |who: &str| {
        kube::api::Patch::Merge(json!({
            "metadata": {"resourceVersion": decided_on},
            "spec": {"holderIdentity": who},
        }))
    };
    let params = kube::api::PatchParams::default();
    leases
        .patch("precondition", &params, &take("first"))
        .await
        .unwrap();
    let second = leases.patch("precondition", &params, &take("second")).await;
    assert!(
        matches!(&second, Err(kube::Error::Api(s)) if s.code == 409),
        "{second:?}"
    );
    assert_eq!(holder(&env, "precondition").await.as_deref(), Some("first"));
}
