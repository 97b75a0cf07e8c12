//! The web dashboard end to end: a 3-member cluster, its dashboard open in headless Chromium
//! (driven through chromedriver), checked for the members and leader, a key written with
//! etcdctl, and a new leader after the leader is killed. The screen is then saved as
//! `target/dashboard-e2e.png`; last, the page's own member is killed and the page must say it
//! lost it (saved as `target/dashboard-e2e-disconnected.png`).
//!
//! Needs Debian's `chromium` and `chromium-driver`: without them the test fails when `CI` is set,
//! and is skipped (with a notice) otherwise.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::webdriver::{self, Browser};
use common::{Cluster, WAIT};
use serde_json::Value;

/// The member rows as the page shows them.
const MEMBER_ROWS: &str = r#"
    return Array.from(document.querySelectorAll('[data-testid="member-row"]')).map((row) => ({
        id: row.dataset.memberId,
        name: row.dataset.memberName,
        leader: row.dataset.leader === 'true',
        healthy: row.dataset.healthy === 'true',
    }));
"#;

/// The key rows as the page shows them: key and value text.
const KEY_ROWS: &str = r#"
    return Array.from(document.querySelectorAll('[data-testid="key-row"]'))
        .map((row) => [row.dataset.key, row.cells[1].innerText]);
"#;

#[derive(Debug)]
struct Row {
    id: String,
    name: String,
    leader: bool,
    healthy: bool,
}

fn member_rows(browser: &Browser) -> Vec<Row> {
    let rows = browser.execute(MEMBER_ROWS, vec![]);
    rows.as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| Row {
                    id: r["id"].as_str().unwrap_or_default().to_string(),
                    name: r["name"].as_str().unwrap_or_default().to_string(),
                    leader: r["leader"].as_bool().unwrap_or(false),
                    healthy: r["healthy"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn text_of(browser: &Browser, css: &str) -> String {
    let script = "const el = document.querySelector(arguments[0]); return el ? el.innerText : null;";
    browser
        .execute(script, vec![Value::from(css)])
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Where screenshots go: the target directory the test binary was built into.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // …/target/debug/concord
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_concord"));
    exe.parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Saves the window as a PNG in the target directory; returns where.
fn save_screenshot(browser: &Browser, name: &str) -> PathBuf {
    let path = target_dir().join(name);
    std::fs::write(&path, browser.screenshot()).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

async fn member_id_hex(cluster: &Cluster, i: usize) -> String {
    let status = cluster.status(i).await.expect("member answers its status");
    format!("{:x}", status.header().expect("header").member_id())
}

/// Waits until the page shows 3 healthy members and exactly one leader, the one the cluster
/// agrees on, while the page is served by a member that is not the leader (it is opened on
/// another member if leadership moved onto its own). Returns the leader's index and id.
async fn confirm_leader(cluster: &Cluster, browser: &Browser, page_member: &mut usize) -> (usize, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let leader = cluster.wait_for_leader().await;
        let leader_id = member_id_hex(cluster, leader).await;
        if leader == *page_member {
            *page_member = (leader + 1) % cluster.members.len();
            browser.goto(&format!("{}/ui/", cluster.members[*page_member].client_url));
        }
        let shown = browser.poll(Duration::from_secs(5), |b| {
            let rows = member_rows(b);
            let leaders: Vec<&Row> = rows.iter().filter(|r| r.leader).collect();
            let ok =
                rows.len() == 3 && leaders.len() == 1 && leaders[0].id == leader_id && rows.iter().all(|r| r.healthy);
            if ok {
                Ok(())
            } else {
                Err(format!("{rows:?}"))
            }
        });
        match shown {
            Ok(()) => return (leader, leader_id),
            // Leadership may have moved meanwhile: ask the cluster again.
            Err(seen) => assert!(
                Instant::now() < deadline,
                "the page did not show 3 healthy members led by {leader_id} within {WAIT:?}; last seen: {seen}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_members_keys_and_a_new_leader() {
    let tools = match webdriver::tools() {
        Ok(tools) => tools,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("the dashboard end-to-end test needs headless Chromium on CI: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED dashboard end-to-end test: {why}");
            return;
        }
    };

    let mut cluster = Cluster::start(3).await;
    let put = cluster.etcdctl(
        &cluster.endpoints(),
        &["put", "dashboard/e2e/greeting", "hello from etcdctl"],
    );
    assert!(
        put.status.success(),
        "etcdctl put: {}",
        String::from_utf8_lossy(&put.stderr)
    );

    // The page is served by a member that is not the leader, so it outlives the leader's death.
    let browser = Browser::start(&tools, 1440, 1350);
    let mut page_member = (cluster.wait_for_leader().await + 1) % 3;
    browser.goto(&format!("{}/ui/", cluster.members[page_member].client_url));

    // The 3 members, exactly one of them marked leader: the cluster's.
    let (leader, leader_hex) = confirm_leader(&cluster, &browser, &mut page_member).await;
    let leader_name = cluster.members[leader].name.clone();
    // One shard holds every key, led by the cluster's leader.
    browser.wait_for("the one shard, led by the leader", WAIT, |b| {
        let rows = b.execute(
            "return [...document.querySelectorAll('[data-testid=shard-row]')].map(r => [r.dataset.shardId, r.dataset.leader]);",
            vec![],
        );
        if rows == serde_json::json!([["1", leader_hex.clone()]]) {
            Ok(())
        } else {
            Err(rows.to_string())
        }
    });
    browser.wait_for("the leader's name in the summary", WAIT, |b| {
        let shown = text_of(b, "[data-testid=leader-name]");
        if shown.contains(&leader_name) {
            Ok(())
        } else {
            Err(shown)
        }
    });

    // The key written with etcdctl, found by prefix in the key browser; its value in full on a click.
    let prefix = browser.find("#prefix").expect("the key browser's prefix box");
    browser.type_text(&prefix, "dashboard/e2e/");
    browser.click(&browser.find("#search").expect("the search button"));
    browser.wait_for("the key written with etcdctl", WAIT, |b| {
        let rows = b.execute(KEY_ROWS, vec![]);
        let found = rows.as_array().into_iter().flatten().any(|r| {
            r[0].as_str() == Some("dashboard/e2e/greeting")
                && r[1].as_str().is_some_and(|v| v.contains("hello from etcdctl"))
        });
        if found {
            Ok(())
        } else {
            Err(rows.to_string())
        }
    });
    let row = browser
        .find(r#"[data-testid="key-row"][data-key="dashboard/e2e/greeting"]"#)
        .expect("the key's row");
    browser.click(&row);
    browser.wait_for("the key's value in the detail panel", WAIT, |b| {
        let value = text_of(b, "[data-testid=detail-value]");
        if value == "hello from etcdctl" {
            Ok(())
        } else {
            Err(value)
        }
    });

    // Some traffic through the page's member until the screenshot, so the chart has something
    // to draw. Calls may fail while the cluster elects a new leader: they are only load.
    let mut client = cluster.client(page_member).await;
    let (stop_load, mut stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(async move {
        let mut i = 0u64;
        while !*stopped.borrow_and_update() {
            let put = client
                .put(format!("dashboard/e2e/load/{:03}", i % 500), "x", None)
                .await;
            let get = client.get("dashboard/e2e/greeting", None).await;
            if put.is_err() || get.is_err() {
                let _ = tokio::time::timeout(Duration::from_millis(100), stopped.changed()).await;
            }
            i += 1;
        }
    });
    browser.wait_for("the load's writes in the revision", WAIT, |b| {
        let shown = text_of(b, "[data-testid=revision]");
        match shown.replace(',', "").parse::<i64>() {
            Ok(revision) if revision >= 100 => Ok(()),
            _ => Err(shown),
        }
    });

    // Kill the leader: the page, served by a survivor, shows another member leading, and the
    // dead one down.
    let (leader, leader_id) = confirm_leader(&cluster, &browser, &mut page_member).await;
    cluster.kill(leader);
    let new_leader = browser.wait_for("a new leader after the leader was killed", WAIT, |b| {
        let rows = member_rows(b);
        let leaders: Vec<&Row> = rows.iter().filter(|r| r.leader).collect();
        let old_down = rows.iter().any(|r| r.id == leader_id && !r.healthy);
        match leaders.as_slice() {
            [new] if new.id != leader_id && new.healthy && old_down && rows.len() == 3 => Ok(new.name.clone()),
            _ => Err(format!("{rows:?}")),
        }
    });
    browser.wait_for("the new leader in the summary", WAIT, |b| {
        let shown = text_of(b, "[data-testid=leader-name]");
        if shown.contains(&new_leader) {
            Ok(())
        } else {
            Err(shown)
        }
    });
    let connection = text_of(&browser, "[data-testid=conn-status]");
    assert_eq!(connection, "live", "the page lost its member, which was not the leader");

    // The next update (a new chart sample), then the screenshot.
    let seen = text_of(&browser, "#updated");
    browser.wait_for("the next update", WAIT, |b| {
        let now = text_of(b, "#updated");
        if now != seen {
            Ok(())
        } else {
            Err(now)
        }
    });
    let path = save_screenshot(&browser, "dashboard-e2e.png");
    println!("dashboard screenshot: {}", path.display());
    let _ = stop_load.send(true);
    load.await.expect("load task");

    // The page's own member dies: the page says it lost it and keeps retrying.
    cluster.kill(page_member);
    browser.wait_for("that the page lost its member", WAIT, |b| {
        let shown = text_of(b, "[data-testid=conn-status]");
        if shown == "disconnected, retrying" {
            Ok(())
        } else {
            Err(shown)
        }
    });
    let banner = text_of(&browser, "[data-testid=banner]");
    assert!(banner.contains("retrying"), "banner: {banner:?}");
    let path = save_screenshot(&browser, "dashboard-e2e-disconnected.png");
    println!("dashboard screenshot after its member died: {}", path.display());
}
