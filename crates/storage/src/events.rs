//! Reading the change history (the `revisions` table, in order) as etcd watch events.

use concord_proto::mvccpb::event::EventType;
use concord_proto::mvccpb::{Event, KeyValue};

use crate::error::StorageError;
use crate::index::Rev;
use crate::keys::{main_revisions, split_row_id, Row};
use crate::view::{fetch_row, live_record, RowTable};

/// The `(main, sub)` revision of each event read, in order.
pub(crate) type EventRevisions = Vec<(i64, u32)>;

/// Reads the events of main revisions `start_rev..=end_rev` from `rows`, stopping at the end of
/// the first main revision at which `max_events` is reached; see `MvccStore::events`. Returns
/// each event's `(main, sub)` alongside, for looking up what it replaced.
pub(crate) fn read_events<T: RowTable>(
    rows: &T,
    start_rev: i64,
    end_rev: i64,
    max_events: usize,
) -> Result<(Vec<Event>, EventRevisions), StorageError> {
    let mut events = Vec::new();
    let mut ids = Vec::new();
    if end_rev < start_rev {
        return Ok((events, ids));
    }
    for row in rows.range(main_revisions(start_rev, end_rev))? {
        let (id, value) = row?;
        let (main, sub) = split_row_id(id.value());
        if events.len() >= max_events && ids.last().map(|&(m, _)| m) != Some(main as i64) {
            break;
        }
        let row = Row::decode(value.value())?;
        let (event_type, kv) = match row.record {
            Some(record) => (EventType::Put, record.to_key_value(row.key, true)?),
            // etcd reports a deletion as the bare key with the deleting revision.
            None => (
                EventType::Delete,
                KeyValue {
                    key: row.key.to_vec(),
                    mod_revision: main as i64,
                    ..Default::default()
                },
            ),
        };
        events.push(Event {
            r#type: event_type as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        let sub = u32::try_from(sub).map_err(|_| StorageError::Corrupt(format!("sub revision {sub} too large")))?;
        ids.push((main as i64, sub));
    }
    Ok((events, ids))
}

/// Fills in each event's `prev_kv` from `prevs`, the version each one replaced as the key index
/// says (`None`, or a deletion, leaves it empty).
pub(crate) fn attach_prev_kvs<T: RowTable>(
    rows: &T,
    events: &mut [Event],
    prevs: &[Option<Rev>],
) -> Result<(), StorageError> {
    for (event, prev) in events.iter_mut().zip(prevs) {
        if let Some(version) = prev.filter(|v| v.is_live()) {
            let guard = fetch_row(rows, version)?;
            let (key, record) = live_record(guard.value())?;
            event.prev_kv = Some(record.to_key_value(key, true)?);
        }
    }
    Ok(())
}
