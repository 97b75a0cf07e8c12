//! Live updates for the page, as server-sent events.
//!
//! `GET /ui/api/events` streams one `update` event a second: `{"cluster": ClusterView, "rate":
//! Sample or null}`; and one at once, with a fresh view, whenever this member sees the leader
//! change. Each event tells the browser to reconnect after [`RETRY`] if the stream breaks.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use futures::Stream;
use serde::Serialize;
use tokio::time::MissedTickBehavior;

use super::cluster::{ClusterView, FRESH_ENOUGH};
use super::Dashboard;
use crate::metrics::rates::{Sample, SAMPLE_INTERVAL};

/// How long the browser waits before it reconnects a broken stream.
const RETRY: Duration = Duration::from_secs(2);

/// One event's data.
#[derive(Serialize)]
struct Update<'a> {
    cluster: &'a ClusterView,
    rate: Option<Sample>,
}

/// What drives one page's stream.
struct Feed {
    dashboard: Arc<Dashboard>,
    leader: tokio::sync::watch::Receiver<u64>,
    ticker: tokio::time::Interval,
}

impl Feed {
    /// Waits for the next tick or leader change; returns whether the view must be fresh.
    async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.ticker.tick() => false,
            changed = self.leader.changed() => {
                if changed.is_err() {
                    // The group stopped: no more leader changes, only ticks.
                    self.ticker.tick().await;
                }
                changed.is_ok()
            }
        }
    }
}

/// `GET /ui/api/events`.
pub async fn events(State(dashboard): State<Arc<Dashboard>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut leader = dashboard.http.ctx.router.default_group().watch_leader();
    leader.mark_unchanged();
    let feed = Feed {
        dashboard,
        leader,
        ticker,
    };
    // The interval's first tick is immediate, so the page gets a view as soon as it connects.
    let stream = futures::stream::unfold(feed, |mut feed| async move {
        let fresh = feed.next().await;
        let view = feed
            .dashboard
            .cluster(if fresh { Duration::ZERO } else { FRESH_ENOUGH })
            .await;
        let update = Update {
            cluster: &view,
            rate: feed.dashboard.http.rates.latest(),
        };
        let event = Event::default()
            .event("update")
            .retry(RETRY)
            .json_data(&update)
            .unwrap_or_else(|e| Event::default().comment(format!("cannot encode the update: {e}")));
        Some((Ok(event), feed))
    });
    Sse::new(stream)
}
