//! Reading the change history (`changes` joined with `kv`) as etcd watch events.

use concord_proto::mvccpb::event::EventType;
use concord_proto::mvccpb::{Event, KeyValue};

use crate::error::StorageError;
use crate::keys::{decode_change, Record, CHANGE_DELETE};
use crate::view::HistoryTable;

/// Reads events from main revision `start_rev` on; see `MvccStore::events`.
pub(crate) fn read_events<H, C>(
    kv: &H,
    changes: &C,
    start_rev: i64,
    max_events: usize,
    with_prev_kv: bool,
) -> Result<Vec<Event>, StorageError>
where
    H: HistoryTable,
    C: redb::ReadableTable<(u64, u64), &'static [u8]>,
{
    let mut events = Vec::new();
    let mut last_main = None;
    for row in changes.range((start_rev as u64, 0u64)..)? {
        let (id, value) = row?;
        let (main, sub) = id.value();
        if events.len() >= max_events && last_main != Some(main) {
            break;
        }
        last_main = Some(main);
        let (kind, key) = decode_change(value.value())?;
        let (event_type, current) = if kind == CHANGE_DELETE {
            // etcd reports a deletion as the bare key with the deleting revision.
            let kv = KeyValue {
                key: key.to_vec(),
                mod_revision: main as i64,
                ..Default::default()
            };
            (EventType::Delete, kv)
        } else {
            // Compaction keeps the `changes` rows at the compaction revision, and the kv row of
            // a put there normally survives as the key's newest version; it is gone only if the
            // same key changed again within that revision, and then a later event covers it.
            let Some(stored) = kv.get((key, main, sub))? else {
                continue;
            };
            (
                EventType::Put,
                Record::decode(stored.value())?.to_key_value(key, true)?,
            )
        };
        let prev_kv = if with_prev_kv {
            match kv.range((key, 0u64, 0u64)..(key, main, sub))?.next_back() {
                Some(row) => {
                    let (_, prev) = row?;
                    let bytes = prev.value();
                    if bytes.is_empty() {
                        None
                    } else {
                        Some(Record::decode(bytes)?.to_key_value(key, true)?)
                    }
                }
                None => None,
            }
        } else {
            None
        };
        events.push(Event {
            r#type: event_type as i32,
            kv: Some(current),
            prev_kv,
        });
    }
    Ok(events)
}
