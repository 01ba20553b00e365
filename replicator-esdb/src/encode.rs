//! An event as the target receives it, the same on both append paths (the
//! client's [`EventData`] and the wire's batch append in
//! [`crate::wire::append`]): id, type, data, user metadata and content type,
//! every byte kept.

use eventstore::EventData;
use replicator_core::{ContentType, Event};
use serde::ser::{Serialize, SerializeStruct, Serializer};
use tracing::warn;

/// Builds what the client sends for `event`: id, type, data, user metadata and
/// content type, every byte kept (see [`EsdbSink`](crate::EsdbSink) for the one exception).
pub fn to_event_data(event: &Event) -> EventData {
    let data = match json_text(event) {
        Some(json) => EventData::json(&event.event_type, &VerbatimJson(json))
            .expect("verbatim JSON serialisation cannot fail"),
        None => EventData::binary(&event.event_type, event.data.clone()),
    };
    data.id(event.id).metadata(event.metadata.clone())
}

/// The data of an event written as JSON: marked JSON and UTF-8 text. Data
/// marked JSON that is not UTF-8 is written as binary, with a warning; the
/// rule of both append paths (the client's and [`crate::wire::append`]).
pub(crate) fn json_text(event: &Event) -> Option<&str> {
    match event.content_type {
        ContentType::Json => match std::str::from_utf8(&event.data) {
            Ok(json) => Some(json),
            Err(_) => {
                warn!(
                    stream = %event.stream,
                    id = %event.id,
                    "Event marked JSON holds bytes that are not UTF-8: written as binary"
                );
                None
            }
        },
        ContentType::Binary => None,
    }
}

/// Serialises to exactly the wrapped text, whether or not it is valid JSON.
///
/// The client only sends JSON content through `serde_json::to_vec`. A
/// `RawValue` would keep valid JSON as is, but it cannot hold empty data
/// (common: events "without data") or text with surrounding whitespace, and
/// it refuses invalid JSON that the source server accepted. So this emits the
/// text through the same path `RawValue` uses; the unit test
/// `json_data_is_sent_verbatim` proves the bytes survive.
struct VerbatimJson<'a>(&'a str);

/// serde_json's marker for "write this string unchanged" (its `RawValue`).
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

impl Serialize for VerbatimJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut raw = serializer.serialize_struct(RAW_VALUE_TOKEN, 1)?;
        raw.serialize_field(RAW_VALUE_TOKEN, self.0)?;
        raw.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_data_is_sent_verbatim() {
        for text in [
            r#"{"b":1,  "a":[1,2] }"#,
            "",
            "  {\"padded\":true}\n",
            "not json at all",
            "{\"unicode\":\"\u{e9}\u{1F600}\\u00e9\"}",
            "1.000000000000000000001",
        ] {
            let bytes = serde_json::to_vec(&VerbatimJson(text)).unwrap();
            assert_eq!(bytes, text.as_bytes(), "{text:?}");
        }
    }
}
