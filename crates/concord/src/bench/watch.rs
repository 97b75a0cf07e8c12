//! The watch workloads: how long a put takes to reach the watchers of its key.
//!
//! `watch` spreads watchers over a key space and has `--clients` putters
//! write to it; every event is timed. `watch-fanout` puts one key that every
//! watcher watches, one put at a time, and times how long each put takes to
//! reach all of them.
//!
//! Each put's value starts with its send time (nanoseconds since the run's
//! time base, 8 bytes little-endian), so whoever receives the event can time
//! it without asking the putter: latency = arrival - send. Both ends live in
//! this process, so one monotonic clock serves both.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::channel::BenchChannel;
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::watch_client::WatchClient;
use concord_proto::etcdserverpb::watch_request::RequestUnion;
use concord_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use tokio::sync::{mpsc, watch as signal};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::keys::{encode_key, KeyChooser, SplitMix64};
use super::pace::Schedule;
use super::progress::{self, ProgressBar};
use super::report::{Summary, Tally};
use super::{seed, status_kind, BenchArgs};

/// Bytes of a value that carry its put's send time.
const STAMP_LEN: usize = 8;

/// A put's value: its send time `sent_ns` (nanoseconds since the run's time
/// base), then `filler`; at least [`STAMP_LEN`] bytes.
pub fn stamped_value(filler: &[u8], sent_ns: u64) -> Vec<u8> {
    let mut value = filler.to_vec();
    if value.len() < STAMP_LEN {
        value.resize(STAMP_LEN, 0);
    }
    value[..STAMP_LEN].copy_from_slice(&sent_ns.to_le_bytes());
    value
}

/// The send time stamped into `value` (see [`stamped_value`]), if it is long enough to hold one.
pub fn read_stamp(value: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(value.get(..STAMP_LEN)?.try_into().ok()?))
}

/// When a put stamped `sent_ns` was sent, if that is a time no later than
/// `now` (anything else is not one of this run's values).
fn sent_at(base: Instant, sent_ns: u64, now: Instant) -> Option<Instant> {
    base.checked_add(Duration::from_nanos(sent_ns))
        .filter(|sent| *sent <= now)
}

/// How many of `watchers` watchers watch key `key`, when watcher `w` watches
/// key `w % key_space` (the `watch` workload's layout): the events one put to
/// that key should produce.
pub fn watchers_on(key: u64, watchers: u64, key_space: u64) -> u64 {
    let key_space = key_space.max(1);
    if key >= key_space {
        return 0;
    }
    watchers / key_space + u64::from(key < watchers % key_space)
}

/// An open watch stream whose watchers have all been created.
struct WatchStream {
    /// Kept open: closing the request side could end the stream.
    _requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

/// Opens a watch stream on `channel` with one watcher per key in `keys`, and
/// waits until the server has created them all.
async fn open_stream(channel: BenchChannel, keys: Vec<Vec<u8>>, timeout: Duration) -> Result<WatchStream, String> {
    let watchers = keys.len();
    // Room for every create request, so they are all queued before the call:
    // a server may send the call's response headers only with its first answer.
    let (tx, rx) = mpsc::channel(watchers + 1);
    for key in keys {
        let create = WatchCreateRequest {
            key,
            ..Default::default()
        };
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        })
        .await
        .map_err(|_| "watch request queue closed".to_string())?;
    }
    let mut client = WatchClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut responses = match tokio::time::timeout(timeout, client.watch(ReceiverStream::new(rx))).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => return Err(status_kind(&s)),
        Err(_) => return Err("no answer to the watch call in time".into()),
    };
    let mut created = 0;
    while created < watchers {
        match tokio::time::timeout(timeout, responses.message()).await {
            Ok(Ok(Some(r))) if r.canceled => return Err(format!("watch refused: {}", r.cancel_reason)),
            Ok(Ok(Some(r))) => created += usize::from(r.created),
            Ok(Ok(None)) => return Err("watch stream ended while creating watchers".into()),
            Ok(Err(s)) => return Err(status_kind(&s)),
            Err(_) => return Err(format!("only {created} of {watchers} watchers created in time")),
        }
    }
    Ok(WatchStream {
        _requests: tx,
        responses,
    })
}

/// Opens `streams` watch streams, stream `s` on connection `s % conns` with
/// watchers on `keys_of(s)`.
async fn open_streams(
    args: &BenchArgs,
    channels: &[BenchChannel],
    streams: usize,
    keys_of: impl Fn(usize) -> Vec<Vec<u8>>,
) -> Result<Vec<WatchStream>, String> {
    let mut opened = Vec::with_capacity(streams);
    for s in 0..streams {
        let channel = channels[s % channels.len()].clone();
        let stream = open_stream(channel, keys_of(s), args.request_timeout())
            .await
            .map_err(|e| format!("{}: watch stream {s}: {e}", args.workload.name()))?;
        opened.push(stream);
    }
    Ok(opened)
}

/// A stamped event as it arrived: its put's send time and its arrival.
struct Arrival {
    sent: Instant,
    at: Instant,
}

/// What one watch stream saw besides its events.
#[derive(Default)]
struct StreamEnd {
    /// Stream failures (a stream that fails loses its later events).
    errors: Tally,
    /// Events whose value carries no send time of this run (someone else's puts).
    foreign: u64,
}

/// Reads `stream` until `stop` says so (or the stream fails), handing every
/// stamped event to `on_arrival`.
async fn read_events(
    mut stream: WatchStream,
    base: Instant,
    mut stop: signal::Receiver<bool>,
    mut on_arrival: impl FnMut(Arrival) + Send,
) -> StreamEnd {
    let mut end = StreamEnd::default();
    loop {
        tokio::select! {
            message = stream.responses.message() => match message {
                Ok(Some(response)) => {
                    let at = Instant::now();
                    if response.canceled {
                        end.errors.error(format!("watch canceled: {}", response.cancel_reason));
                        break;
                    }
                    for event in &response.events {
                        let stamp = event.kv.as_ref().and_then(|kv| read_stamp(&kv.value));
                        match stamp.and_then(|ns| sent_at(base, ns, at)) {
                            Some(sent) => on_arrival(Arrival { sent, at }),
                            None => end.foreign += 1,
                        }
                    }
                }
                Ok(None) => {
                    end.errors.error("watch stream ended");
                    break;
                }
                Err(s) => {
                    end.errors.error(status_kind(&s));
                    break;
                }
            },
            _ = stop.changed() => break,
        }
    }
    end
}

/// Random filler for the values (the send time goes over its first bytes).
fn filler(args: &BenchArgs, rng: &mut SplitMix64) -> Arc<Vec<u8>> {
    Arc::new(
        (0..args.val_size.max(STAMP_LEN))
            .map(|_| rng.next_u64() as u8)
            .collect(),
    )
}

/// One putter of the `watch` workload.
struct Putter {
    kv: KvClient<BenchChannel>,
    keys: KeyChooser,
    key_size: usize,
    filler: Arc<Vec<u8>>,
    base: Instant,
    schedule: Arc<Schedule>,
    watchers: u64,
}

/// Puts stamped values until the schedule ends; returns the puts' tally and
/// how many events the successful ones should produce.
async fn put_loop(mut p: Putter) -> (Tally, u64) {
    let mut puts = Tally::default();
    let mut expected = 0;
    while let Some(request) = p.schedule.take().await {
        let index = p.keys.index(request);
        let sent = Instant::now();
        let value = stamped_value(&p.filler, sent.duration_since(p.base).as_nanos() as u64);
        match p
            .kv
            .put(PutRequest {
                key: encode_key(index, p.key_size),
                value,
                ..Default::default()
            })
            .await
        {
            Ok(_) => {
                puts.latencies.record(sent.elapsed());
                expected += watchers_on(index, p.watchers, p.keys.key_space());
            }
            Err(s) => puts.error(status_kind(&s)),
        }
        p.schedule.complete();
    }
    (puts, expected)
}

/// `watch`: `streams` x `per_stream` watchers spread over the key space,
/// `--clients` putters; every event is timed from its put's send.
pub async fn run_watch(
    args: &BenchArgs,
    channels: &[BenchChannel],
    streams: usize,
    per_stream: usize,
) -> Result<Summary, String> {
    let watchers = (streams * per_stream) as u64;
    let key_space = args.key_space;
    let base = Instant::now();
    let opened = open_streams(args, channels, streams, |s| {
        (0..per_stream)
            .map(|j| encode_key(((s * per_stream + j) as u64) % key_space, args.key_size))
            .collect()
    })
    .await?;

    let (stop, stopped) = signal::channel(false);
    let received = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = opened
        .into_iter()
        .map(|stream| {
            let (received, stopped) = (received.clone(), stopped.clone());
            tokio::spawn(async move {
                let mut events = Tally::default();
                let mut last = None;
                let end = read_events(stream, base, stopped, |a| {
                    events.latencies.record(a.at.saturating_duration_since(a.sent));
                    last = Some(a.at);
                    received.fetch_add(1, Ordering::Relaxed);
                })
                .await;
                (events, end, last)
            })
        })
        .collect();

    let mut rng = SplitMix64::new(seed());
    let filler = filler(args, &mut rng);
    let schedule = Arc::new(Schedule::new(args.goal(), args.rate));
    let bar = ProgressBar::start(schedule.clone(), args.goal(), "puts");
    let putters: Vec<_> = (0..args.clients)
        .map(|c| {
            tokio::spawn(put_loop(Putter {
                kv: KvClient::new(channels[c % channels.len()].clone()),
                keys: KeyChooser::new(key_space, args.sequential_keys, rng.next_u64()),
                key_size: args.key_size,
                filler: filler.clone(),
                base,
                schedule: schedule.clone(),
                watchers,
            }))
        })
        .collect();
    let mut puts = Tally::default();
    let mut expected = 0;
    for putter in putters {
        let (tally, n) = putter.await.map_err(|e| format!("a putter task failed: {e}"))?;
        puts.merge(&tally);
        expected += n;
    }
    let puts_done = Instant::now();
    progress::finish(bar).await;

    // Wait for the events still on their way, while they keep coming.
    let grace = args.request_timeout();
    let (mut seen, mut since) = (received.load(Ordering::Relaxed), Instant::now());
    while seen < expected && since.elapsed() < grace {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = received.load(Ordering::Relaxed);
        if now != seen {
            (seen, since) = (now, Instant::now());
        }
    }
    let _ = stop.send(true);

    let mut events = Tally::default();
    let mut foreign = 0;
    let mut last_event = None;
    for reader in readers {
        let (tally, end, last) = reader.await.map_err(|e| format!("a watch task failed: {e}"))?;
        events.merge(&tally);
        events.merge(&end.errors);
        foreign += end.foreign;
        last_event = last_event.max(last);
    }
    let missed = expected.saturating_sub(events.latencies.count());
    events.errors(format!("event not received within {} s", grace.as_secs()), missed);
    let end = last_event.map_or(puts_done, |t| t.max(puts_done));

    let mut summary = events.summary("watch", end - schedule.start()).with_unit("events");
    summary.counters = vec![
        ("watchers", watchers),
        ("events_expected", expected),
        ("foreign_events", foreign),
    ];
    summary.parts = vec![puts.summary("put", puts_done - schedule.start())];
    if key_space > watchers {
        summary.counters.push(("unwatched_keys", key_space - watchers));
    }
    Ok(summary)
}

/// `watch-fanout`: `streams` x `per_stream` watchers all on one key; one put
/// at a time, each timed from its send until every watcher has its event.
pub async fn run_fanout(
    args: &BenchArgs,
    channels: &[BenchChannel],
    streams: usize,
    per_stream: usize,
) -> Result<Summary, String> {
    let watchers = (streams * per_stream) as u64;
    let key = encode_key(0, args.key_size);
    let base = Instant::now();
    let opened = open_streams(args, channels, streams, |_| vec![key.clone(); per_stream]).await?;

    let (stop, stopped) = signal::channel(false);
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel::<Arrival>();
    let readers: Vec<_> = opened
        .into_iter()
        .map(|stream| {
            let arrivals = arrivals_tx.clone();
            tokio::spawn(read_events(stream, base, stopped.clone(), move |a| {
                let _ = arrivals.send(a);
            }))
        })
        .collect();
    // Once every reader is gone, `arrivals` says so.
    drop(arrivals_tx);

    let mut rng = SplitMix64::new(seed());
    let filler = filler(args, &mut rng);
    let mut kv = KvClient::new(channels[0].clone());
    let timeout = args.request_timeout();
    let missed_kind = format!("event not received within {} s", timeout.as_secs());

    let schedule = Arc::new(Schedule::new(args.goal(), args.rate));
    let bar = ProgressBar::start(schedule.clone(), args.goal(), "puts");
    let mut delivered = Tally::default();
    let mut per_watcher = Tally::default();
    let mut puts = Tally::default();
    let mut late = 0;
    let mut watchers_gone = false;
    while !watchers_gone && schedule.take().await.is_some() {
        // The send time exactly as the readers will decode it from the value.
        let stamp = base.elapsed().as_nanos() as u64;
        let sent = base + Duration::from_nanos(stamp);
        let value = stamped_value(&filler, stamp);
        let put = kv
            .put(PutRequest {
                key: key.clone(),
                value,
                ..Default::default()
            })
            .await;
        if let Err(s) = put {
            puts.error(status_kind(&s));
            delivered.error(format!("put failed: {}", status_kind(&s)));
            schedule.complete();
            continue;
        }
        puts.latencies.record(sent.elapsed());
        let deadline = tokio::time::Instant::from_std(sent + timeout);
        let (mut got, mut last) = (0, sent);
        while got < watchers {
            match tokio::time::timeout_at(deadline, arrivals.recv()).await {
                Ok(Some(a)) if a.sent == sent => {
                    got += 1;
                    per_watcher.latencies.record(a.at.saturating_duration_since(sent));
                    last = last.max(a.at);
                }
                // An earlier put's event, arriving after that put was given up on.
                Ok(Some(_)) => late += 1,
                Ok(None) => {
                    watchers_gone = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if got == watchers {
            delivered.latencies.record(last.saturating_duration_since(sent));
        } else {
            delivered.error(format!(
                "not every watcher got the event within {} s",
                timeout.as_secs()
            ));
            per_watcher.errors(missed_kind.clone(), watchers - got);
        }
        schedule.complete();
    }
    let duration = schedule.start().elapsed();
    progress::finish(bar).await;
    let _ = stop.send(true);
    let mut foreign = 0;
    for reader in readers {
        let end = reader.await.map_err(|e| format!("a watch task failed: {e}"))?;
        per_watcher.merge(&end.errors);
        foreign += end.foreign;
    }

    let mut summary = delivered.summary("watch-fanout", duration).with_unit("puts");
    summary.counters = vec![
        ("watchers", watchers),
        ("late_events", late),
        ("foreign_events", foreign),
    ];
    summary.parts = vec![
        per_watcher.summary("per-watcher", duration).with_unit("events"),
        puts.summary("put", duration),
    ];
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_send_time() {
        let v = stamped_value(&[9; 20], 0x0102_0304_0506_0708);
        assert_eq!(v.len(), 20);
        assert_eq!(&v[..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&v[8..], &[9; 12]);
        assert_eq!(read_stamp(&v), Some(0x0102_0304_0506_0708));
        // Too small a value grows to hold the stamp.
        assert_eq!(stamped_value(&[], 5), vec![5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(read_stamp(&[1, 2, 3]), None);
    }

    #[test]
    fn only_plausible_stamps_are_send_times() {
        let base = Instant::now();
        let now = base + Duration::from_secs(1);
        assert_eq!(sent_at(base, 500_000_000, now), Some(base + Duration::from_millis(500)));
        assert_eq!(sent_at(base, 1_000_000_000, now), Some(now));
        // From the future (someone else's value): not ours.
        assert_eq!(sent_at(base, 2_000_000_000, now), None);
        assert_eq!(sent_at(base, u64::MAX, now), None);
    }

    #[test]
    fn watchers_spread_over_the_key_space() {
        // 10 watchers over 4 keys: keys 0 and 1 get 3, keys 2 and 3 get 2.
        let counts: Vec<u64> = (0..4).map(|k| watchers_on(k, 10, 4)).collect();
        assert_eq!(counts, vec![3, 3, 2, 2]);
        // Agrees with counting watcher by watcher.
        for (watchers, space) in [(10u64, 4u64), (7, 7), (3, 8), (100, 1), (64, 256)] {
            for key in 0..space {
                let by_hand = (0..watchers).filter(|w| w % space == key).count() as u64;
                assert_eq!(watchers_on(key, watchers, space), by_hand, "{watchers} {space} {key}");
            }
            assert_eq!(
                (0..space).map(|k| watchers_on(k, watchers, space)).sum::<u64>(),
                watchers
            );
        }
        assert_eq!(watchers_on(9, 10, 4), 0);
    }
}
