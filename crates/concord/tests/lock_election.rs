//! etcd's v3lock and v3election services on a real cluster: mutual
//! exclusion, hand-over on unlock/resign/lease loss, Observe, clean-up of
//! abandoned calls, etcd's errors, and interoperation with etcdctl's
//! client-side `lock` and `elect` (same key layout, same recipe).
//!
//! Most of these need leases (a lock or a candidacy lives on a lease).

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, grpc_status, Cluster, WAIT};
use etcd_client::{Client, ConnectOptions, GetOptions, LeaderKey, LockOptions, ProclaimOptions, ResignOptions};
use tonic::Code;

/// The key etcd keeps for a participant with `lease` in lock/election `name`.
fn participant_key(name: &str, lease: i64) -> String {
    format!("{name}/{lease:x}")
}

/// Runs `fut` within [`WAIT`] or fails the test with `what`.
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {WAIT:?}"))
}

/// A client of member `i` whose calls give up after `timeout`.
async fn impatient_client(cluster: &Cluster, i: usize, timeout: Duration) -> Client {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(timeout);
    Client::connect([cluster.members[i].client_url.as_str()], Some(opts))
        .await
        .expect("connect")
}

/// Waits until `key` exists, and returns its create revision.
async fn wait_for_key(c: &mut Client, key: &str) -> i64 {
    eventually(&format!("key {key} appears"), || {
        let mut c = c.clone();
        let key = key.to_string();
        async move {
            let resp = c.get(key.as_str(), None).await.map_err(|e| e.to_string())?;
            resp.kvs()
                .first()
                .map(|kv| kv.create_revision())
                .ok_or_else(|| format!("{key} not there yet"))
        }
    })
    .await
}

/// Waits until `key` is gone.
async fn wait_for_no_key(c: &mut Client, key: &str) {
    eventually(&format!("key {key} goes"), || {
        let mut c = c.clone();
        let key = key.to_string();
        async move {
            let resp = c.get(key.as_str(), None).await.map_err(|e| e.to_string())?;
            if resp.kvs().is_empty() {
                Ok(())
            } else {
                Err(format!("{key} still there"))
            }
        }
    })
    .await
}

/// A lock response's key as text.
fn lock_key(resp: &etcd_client::LockResponse) -> String {
    String::from_utf8(resp.key().to_vec()).expect("utf-8 lock key")
}

/// The keys under `prefix`, in create-revision order.
async fn keys_under(c: &mut Client, prefix: &str) -> Vec<String> {
    let resp = c
        .get(
            prefix,
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(etcd_client::SortTarget::Create, etcd_client::SortOrder::Ascend),
            ),
        )
        .await
        .expect("get prefix");
    resp.kvs().iter().map(|kv| kv.key_str().unwrap().to_string()).collect()
}

/// etcdctl (API v3), as a child process that runs until it exits or is stopped.
fn spawn_etcdctl(cluster: &Cluster, args: &[&str]) -> Child {
    // host:port endpoints, as `Cluster::etcdctl` passes them.
    let endpoints: Vec<String> = cluster
        .endpoints()
        .iter()
        .map(|e| e.trim_start_matches("http://").to_string())
        .collect();
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl is installed (Debian package etcd-client)")
}

/// Waits for a child to exit within [`WAIT`], and returns its output.
async fn wait_child(child: Child) -> std::process::Output {
    within(
        "etcdctl exits",
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("join")
    .expect("etcdctl output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_is_exclusive_and_passes_to_the_next_waiter() {
    let cluster = Cluster::start(3).await;
    let mut a = cluster.client(0).await;
    let mut b = cluster.client(1).await;
    let la = a.lease_grant(30, None).await.unwrap().id();
    let lb = b.lease_grant(30, None).await.unwrap().id();

    let held = within("A locks", a.lock("mylock", Some(LockOptions::new().with_lease(la))))
        .await
        .unwrap();
    let key_a = lock_key(&held);
    assert_eq!(key_a, participant_key("mylock", la));
    let kv = a.get(key_a.as_str(), None).await.unwrap();
    assert_eq!(kv.kvs()[0].lease(), la, "the lock key lives on the lease");

    // Locking again with the same lease is the same acquisition.
    let again = within(
        "A locks again",
        a.lock("mylock", Some(LockOptions::new().with_lease(la))),
    )
    .await
    .unwrap();
    assert_eq!(again.key(), key_a.as_bytes());

    let mut b2 = b.clone();
    let waiter = tokio::spawn(async move { b2.lock("mylock", Some(LockOptions::new().with_lease(lb))).await });
    // B has queued its key behind A's ...
    let key_b = participant_key("mylock", lb);
    wait_for_key(&mut b, &key_b).await;
    assert_eq!(keys_under(&mut a, "mylock/").await, vec![key_a.clone(), key_b.clone()]);
    // ... and while A holds the lock, B does not have it.
    assert!(!waiter.is_finished(), "B got the lock while A held it");

    let unlocked = within("A unlocks", a.unlock(key_a.as_str())).await.unwrap();
    let unlock_rev = unlocked.header().unwrap().revision();
    let got = within("B locks", waiter).await.unwrap().expect("B's lock");
    assert_eq!(lock_key(&got), key_b);
    assert!(
        got.header().unwrap().revision() >= unlock_rev,
        "B's lock ({}) answered before A's unlock ({unlock_rev})",
        got.header().unwrap().revision()
    );
    // A's key is gone at the revision B got the lock at.
    let at = a
        .get(
            key_a.as_str(),
            Some(GetOptions::new().with_revision(got.header().unwrap().revision())),
        )
        .await
        .unwrap();
    assert!(at.kvs().is_empty());
    b.unlock(key_b.as_str()).await.unwrap();
    assert!(keys_under(&mut a, "mylock/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_lockers_never_overlap() {
    let cluster = Cluster::start(3).await;
    let holders = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let mut c = cluster.client(i % 3).await;
        let holders = holders.clone();
        tasks.push(tokio::spawn(async move {
            let lease = c.lease_grant(30, None).await.unwrap().id();
            for _ in 0..3 {
                let held = c
                    .lock("counter", Some(LockOptions::new().with_lease(lease)))
                    .await
                    .unwrap();
                let inside = holders.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                assert_eq!(inside, 0, "two lockers hold the lock at once");
                // A read-modify-write that only the holder may do.
                let n = c
                    .get("counter-value", None)
                    .await
                    .unwrap()
                    .kvs()
                    .first()
                    .map_or(0, |kv| kv.value_str().unwrap().parse::<u64>().unwrap());
                tokio::time::sleep(Duration::from_millis(20)).await;
                c.put("counter-value", (n + 1).to_string(), None).await.unwrap();
                holders.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                c.unlock(held.key()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        within("lockers finish", t).await.unwrap();
    }
    let mut c = cluster.client(0).await;
    let n = c.get("counter-value", None).await.unwrap();
    assert_eq!(
        n.kvs()[0].value_str().unwrap(),
        "12",
        "an increment was lost: the lock let two in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_without_a_lease_runs_on_a_one_minute_session_lease() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(2).await;
    let held = within("lock", c.lock("nolease", None)).await.unwrap();
    let key = lock_key(&held);
    let kv = c.get(key.as_str(), None).await.unwrap().kvs()[0].clone();
    let lease = kv.lease();
    assert_ne!(lease, 0, "etcd's lock server grants a session lease");
    assert_eq!(key, participant_key("nolease", lease));
    let ttl = c.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 60);
    c.unlock(key.as_str()).await.unwrap();
    assert!(keys_under(&mut c, "nolease/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_with_an_unknown_lease_fails_like_etcd() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(0).await;
    let err = c
        .lock("l", Some(LockOptions::new().with_lease(0x1234)))
        .await
        .unwrap_err();
    let status = grpc_status(err);
    assert_eq!(status.message(), "etcdserver: requested lease not found");
    assert!(keys_under(&mut c, "l/").await.is_empty());
    // Unlock of an empty key is refused as etcd's Delete refuses it.
    let status = grpc_status(c.unlock("").await.unwrap_err());
    assert_eq!(status.message(), "etcdserver: key is not provided");
    // Unlock of a key that is not there is fine.
    c.unlock("l/abc").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abandoned_lock_call_leaves_the_queue() {
    let cluster = Cluster::start(3).await;
    let mut a = cluster.client(0).await;
    let la = a.lease_grant(30, None).await.unwrap().id();
    let lb = a.lease_grant(30, None).await.unwrap().id();
    let held = a.lock("queue", Some(LockOptions::new().with_lease(la))).await.unwrap();

    // B gives up after a second; its queued key must go with it, or it would
    // hold the lock for nobody once A unlocks.
    let mut b = impatient_client(&cluster, 1, Duration::from_secs(1)).await;
    let gave_up = within("B gives up", b.lock("queue", Some(LockOptions::new().with_lease(lb)))).await;
    assert!(gave_up.is_err(), "B cannot get the lock A holds");
    wait_for_no_key(&mut a, &participant_key("queue", lb)).await;
    assert_eq!(keys_under(&mut a, "queue/").await, vec![lock_key(&held)]);
    a.unlock(held.key()).await.unwrap();

    // The lease-less variant: the session lease is the server's own.
    let held = a.lock("queue", Some(LockOptions::new().with_lease(la))).await.unwrap();
    let gave_up = within("B gives up", b.lock("queue", None)).await;
    assert!(gave_up.is_err());
    eventually("only A's key is left", || {
        let mut a = a.clone();
        let expected = vec![lock_key(&held)];
        async move {
            let keys = keys_under(&mut a, "queue/").await;
            if keys == expected {
                Ok(())
            } else {
                Err(keys)
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_loss_releases_the_holder_and_fails_the_waiter() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(0).await;
    let la = c.lease_grant(30, None).await.unwrap().id();
    let lb = c.lease_grant(30, None).await.unwrap().id();
    let lc = c.lease_grant(30, None).await.unwrap().id();
    c.lock("ll", Some(LockOptions::new().with_lease(la))).await.unwrap();

    let mut cb = cluster.client(1).await;
    let b = tokio::spawn(async move { cb.lock("ll", Some(LockOptions::new().with_lease(lb))).await });
    let mut cc = cluster.client(2).await;
    let waiter_c = tokio::spawn(async move { cc.lock("ll", Some(LockOptions::new().with_lease(lc))).await });
    wait_for_key(&mut c, &participant_key("ll", lb)).await;
    wait_for_key(&mut c, &participant_key("ll", lc)).await;

    // C's lease goes while C waits: etcd's "mutex: session is expired".
    c.lease_revoke(lc).await.unwrap();
    let status = grpc_status(within("C fails", waiter_c).await.unwrap().unwrap_err());
    assert_eq!(status.message(), "mutex: session is expired");
    assert_eq!(status.code(), Code::Unknown);
    assert!(!b.is_finished(), "B got the lock while A held it");

    // The holder's lease goes: the lock passes to B.
    c.lease_revoke(la).await.unwrap();
    let got = within("B locks", b).await.unwrap().expect("B's lock");
    assert_eq!(lock_key(&got), participant_key("ll", lb));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_lock_and_the_lock_service_exclude_each_other() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(0).await;
    let lease = c.lease_grant(30, None).await.unwrap().id();

    // The service holds "shared"; etcdctl queues behind it.
    let held = c
        .lock("shared", Some(LockOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let mut ctl = spawn_etcdctl(
        &cluster,
        &["lock", "shared", "--", "sh", "-c", "echo ran with $ETCD_LOCK_KEY"],
    );
    let deadline = std::time::Instant::now() + WAIT;
    while keys_under(&mut c, "shared/").await.len() < 2 {
        if let Some(status) = ctl.try_wait().unwrap() {
            let out = wait_child(ctl).await;
            panic!(
                "etcdctl lock exited ({status}) while the lock was held: {} / {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(std::time::Instant::now() < deadline, "etcdctl never queued its key");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keys = keys_under(&mut c, "shared/").await;
    let ctl_key = keys[1].clone();
    assert_eq!(keys[0], lock_key(&held));
    assert!(
        ctl.try_wait().unwrap().is_none(),
        "etcdctl ran its command while the lock was held"
    );
    c.unlock(held.key()).await.unwrap();
    let out = wait_child(ctl).await;
    assert!(
        out.status.success(),
        "etcdctl lock failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ran with {ctl_key}")
    );
    wait_for_no_key(&mut c, &ctl_key).await;

    // etcdctl holds "shared" while its command runs; the service waits for it.
    let ctl = spawn_etcdctl(&cluster, &["lock", "shared", "--", "sleep", "2"]);
    let ctl_rev = eventually("etcdctl holds the lock", || {
        let mut c = c.clone();
        async move {
            let resp = c
                .get("shared/", Some(GetOptions::new().with_prefix()))
                .await
                .map_err(|e| e.to_string())?;
            resp.kvs()
                .first()
                .map(|kv| kv.create_revision())
                .ok_or_else(|| "no key yet".to_string())
        }
    })
    .await;
    let ctl_key = keys_under(&mut c, "shared/").await[0].clone();
    let got = within(
        "the service locks",
        c.lock("shared", Some(LockOptions::new().with_lease(lease))),
    )
    .await
    .unwrap();
    let rev = got.header().unwrap().revision();
    assert!(rev > ctl_rev);
    let at = c
        .get(ctl_key.as_str(), Some(GetOptions::new().with_revision(rev)))
        .await
        .unwrap();
    assert!(
        at.kvs().is_empty(),
        "the service got the lock while etcdctl still held it"
    );
    let out = wait_child(ctl).await;
    assert!(
        out.status.success(),
        "etcdctl lock failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.unlock(got.key()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn election_hands_over_on_resign_and_observe_follows() {
    let cluster = Cluster::start(3).await;
    let mut a = cluster.client(0).await;
    let mut b = cluster.client(1).await;
    let mut o = cluster.client(2).await;
    let la = a.lease_grant(30, None).await.unwrap().id();
    let lb = b.lease_grant(30, None).await.unwrap().id();

    let status = grpc_status(o.leader("svc").await.unwrap_err());
    assert_eq!(status.message(), "election: no leader");
    assert_eq!(status.code(), Code::Unknown);

    // Observe an empty election: the first candidate is its first leader.
    let mut observe = o.observe("svc").await.unwrap();

    let won = within("A campaigns", a.campaign("svc", "a1", la)).await.unwrap();
    let leader_a: LeaderKey = won.leader().unwrap().clone();
    assert_eq!(leader_a.name(), b"svc");
    assert_eq!(leader_a.key_str().unwrap(), participant_key("svc", la));
    assert_eq!(leader_a.lease(), la);
    let kv = a.get(leader_a.key(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(leader_a.rev(), kv.create_revision());
    assert_eq!(kv.value(), b"a1");
    assert_eq!(kv.lease(), la);

    let seen = within("observe A", observe.message()).await.unwrap().unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"a1");
    let l = o.leader("svc").await.unwrap();
    assert_eq!(l.kv().unwrap().value(), b"a1");

    let mut b2 = b.clone();
    let campaign_b = tokio::spawn(async move { b2.campaign("svc", "b1", lb).await });
    wait_for_key(&mut b, &participant_key("svc", lb)).await;
    assert!(!campaign_b.is_finished(), "B leads while A does");

    // A proclaims a new value: Leader and Observe see it.
    a.proclaim("a2", Some(ProclaimOptions::new().with_leader(leader_a.clone())))
        .await
        .unwrap();
    let seen = within("observe a2", observe.message()).await.unwrap().unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"a2");
    assert_eq!(o.leader("svc").await.unwrap().kv().unwrap().value(), b"a2");
    assert!(!campaign_b.is_finished());

    // A resigns: B leads.
    a.resign(Some(ResignOptions::new().with_leader(leader_a.clone())))
        .await
        .unwrap();
    let won_b = within("B campaigns", campaign_b).await.unwrap().expect("B's campaign");
    let leader_b = won_b.leader().unwrap().clone();
    assert_eq!(leader_b.key_str().unwrap(), participant_key("svc", lb));
    assert_eq!(o.leader("svc").await.unwrap().kv().unwrap().value(), b"b1");
    let seen = within("observe B", observe.message()).await.unwrap().unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"b1");
    assert_eq!(seen.kv().unwrap().key(), leader_b.key());

    // A is no leader any more.
    let status = grpc_status(
        a.proclaim("a3", Some(ProclaimOptions::new().with_leader(leader_a.clone())))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.message(), "election: not leader");
    assert_eq!(status.code(), Code::Unknown);
    // Resigning twice is no error (etcd's compare simply fails).
    a.resign(Some(ResignOptions::new().with_leader(leader_a)))
        .await
        .unwrap();
    // A LeaderKey is required.
    let status = grpc_status(a.resign(None).await.unwrap_err());
    assert_eq!(status.message(), "\"leader\" field must be provided");
    let status = grpc_status(a.proclaim("x", None).await.unwrap_err());
    assert_eq!(status.message(), "\"leader\" field must be provided");

    // Campaigning again with a lease that already stands resumes that
    // candidacy and proclaims the new value.
    let again = within("B again", b.campaign("svc", "b2", lb)).await.unwrap();
    assert_eq!(again.leader().unwrap().rev(), leader_b.rev());
    assert_eq!(o.leader("svc").await.unwrap().kv().unwrap().value(), b"b2");
    let seen = within("observe b2", observe.message()).await.unwrap().unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"b2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_lease_goes_hands_over() {
    let cluster = Cluster::start(3).await;
    let mut a = cluster.client(0).await;
    let mut b = cluster.client(1).await;
    let mut o = cluster.client(2).await;

    // Revoked.
    let la = a.lease_grant(30, None).await.unwrap().id();
    let lb = b.lease_grant(30, None).await.unwrap().id();
    a.campaign("rev", "a", la).await.unwrap();
    let mut b2 = b.clone();
    let campaign_b = tokio::spawn(async move { b2.campaign("rev", "b", lb).await });
    wait_for_key(&mut o, &participant_key("rev", lb)).await;
    assert!(!campaign_b.is_finished());
    a.lease_revoke(la).await.unwrap();
    within("B leads", campaign_b).await.unwrap().expect("B's campaign");
    assert_eq!(o.leader("rev").await.unwrap().kv().unwrap().value(), b"b");

    // Expired: A's lease is never kept alive.
    let la = a.lease_grant(2, None).await.unwrap().id();
    let lb = b.lease_grant(60, None).await.unwrap().id();
    a.campaign("exp", "a", la).await.unwrap();
    let mut observe = o.observe("exp").await.unwrap();
    let seen = within("observe A", observe.message()).await.unwrap().unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"a");
    let won = within("B leads once A's lease expires", b.campaign("exp", "b", lb))
        .await
        .unwrap();
    assert_eq!(won.leader().unwrap().key_str().unwrap(), participant_key("exp", lb));
    assert!(a.get(participant_key("exp", la), None).await.unwrap().kvs().is_empty());
    let seen = within("observe B", observe.message()).await.unwrap().unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abandoned_campaign_withdraws() {
    let cluster = Cluster::start(3).await;
    let mut a = cluster.client(0).await;
    let la = a.lease_grant(30, None).await.unwrap().id();
    let lb = a.lease_grant(30, None).await.unwrap().id();
    a.campaign("quit", "a", la).await.unwrap();
    let mut b = impatient_client(&cluster, 1, Duration::from_secs(1)).await;
    assert!(within("B gives up", b.campaign("quit", "b", lb)).await.is_err());
    wait_for_no_key(&mut a, &participant_key("quit", lb)).await;
    assert_eq!(keys_under(&mut a, "quit/").await, vec![participant_key("quit", la)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_elect_and_campaign_share_one_election() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(0).await;

    // etcdctl campaigns and leads (it stays in the election until interrupted).
    let mut ctl = spawn_etcdctl(&cluster, &["elect", "shared-e", "from-etcdctl"]);
    // Once elected, etcdctl prints its key and value (interrupting it any
    // earlier would cancel its campaign instead).
    let stdout = ctl.stdout.take().unwrap();
    let elected = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .take(2)
            .map(|l| l.unwrap())
            .collect::<Vec<_>>()
    });
    let printed = within("etcdctl is elected", elected).await.unwrap();
    assert_eq!(printed.len(), 2, "etcdctl elect exited early");
    assert!(printed[0].starts_with("shared-e/"), "{printed:?}");
    assert_eq!(printed[1], "from-etcdctl");
    assert_eq!(
        c.leader("shared-e").await.unwrap().kv().unwrap().key_str().unwrap(),
        printed[0]
    );

    // The service's candidate waits behind it.
    let lease = c.lease_grant(30, None).await.unwrap().id();
    let mut c2 = c.clone();
    let campaign = tokio::spawn(async move { c2.campaign("shared-e", "from-rust", lease).await });
    wait_for_key(&mut c, &participant_key("shared-e", lease)).await;
    assert!(!campaign.is_finished(), "two leaders at once");
    assert!(ctl.try_wait().unwrap().is_none());

    // etcdctl resigns on SIGINT; the service's candidate leads.
    let _ = Command::new("kill").args(["-INT", &ctl.id().to_string()]).status();
    let out = wait_child(ctl).await;
    assert!(
        out.status.success(),
        "etcdctl elect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let won = within("the service's candidate leads", campaign)
        .await
        .unwrap()
        .expect("campaign");
    assert_eq!(won.leader().unwrap().lease(), lease);
    assert_eq!(c.leader("shared-e").await.unwrap().kv().unwrap().value(), b"from-rust");

    // etcdctl's observer sees the service's leader.
    let mut listen = spawn_etcdctl(&cluster, &["elect", "-l", "shared-e"]);
    let stdout = listen.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .take(2)
            .map(|l| l.unwrap())
            .collect::<Vec<_>>()
    });
    let lines = within("etcdctl observes", first).await.unwrap();
    let _ = listen.kill();
    let _ = listen.wait();
    assert_eq!(lines, vec![participant_key("shared-e", lease), "from-rust".to_string()]);
}
