//! The body of `POST /v1/jobs`: the [`CreateJob`] document, turned into a service request, and
//! its items read one by one from the body.
//!
//! A JSON body's items are never held as a list: the body is read once for the job's fields
//! (the items only counted), then again, item by item, straight into the job service's
//! batcher (and, with an `Idempotency-Key`, once more into the request's hash). Each pass
//! borrows the items from the body, so a job of a million items costs no allocation per item.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::dto::{CodecDto, OnErrorDto};
use crate::jobs::JobRequest;

/// A map job: `pool.map(function, items, chunksize)` with `functools.partial`-style kwargs.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// A function the workers advertise (GET /v1/functions), by its name or one of its
    /// aliases; names may be qualified as `module:qualname` (e.g. `time:sleep`). 1 to 255
    /// characters, none of them a control character.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"
    )]
    function: String,
    /// The iterable: any JSON values, each nested at most 100 levels deep. With `star`, each
    /// item is an array of positional arguments. With `codec: pickle`, each item is a base64
    /// string (a pickle; with `star`, of the sequence of positional arguments).
    /// Required in a JSON body; absent from line 1 of an NDJSON body (the items follow it).
    // Only counted here: the items are read from the body one by one (see the module doc),
    // and never serialized (`request_hash` writes them itself).
    #[serde(default, skip_serializing_if = "never_serialized")]
    #[schema(value_type = Vec<serde_json::Value>, required = true)]
    items: Option<ItemCount>,
    /// Fixed keyword arguments, like `functools.partial`: a JSON object of at most 1 MiB,
    /// nested at most 100 levels deep. Default `{}`. With `codec: pickle`, each value is a
    /// base64 string (a pickle).
    #[schema(value_type = Option<Object>)]
    kwargs: Option<Box<RawValue>>,
    /// Each item is an array of positional arguments (`starmap`). Default false.
    #[serde(default)]
    star: bool,
    /// Most items per chunk sent to a worker (1 to 1000000). Default: automatic, like
    /// `Pool.map` (`ceil(len / (4 * workers))`, at most 1000). A chunk also ends once it holds
    /// 256 KiB of item JSON, so a chunk of large items may hold fewer.
    #[schema(minimum = 1, maximum = 1000000)]
    #[serde(default, deserialize_with = "integer")]
    chunksize: Option<i64>,
    /// Per-item time limit in seconds, above 0 and at most 604800 (7 days); default: the
    /// server's `--task-timeout`, if any. An item over it fails with a `timeout` error and
    /// its worker is stopped (SIGTERM, then SIGKILL) and replaced; the rest of its chunk completes.
    #[schema(exclusive_minimum = 0, maximum = 604800)]
    timeout_s: Option<f64>,
    /// Runs per chunk when its worker dies (1 to 100). Default 1. A chunk that still kills its
    /// worker is split so that only the guilty item fails (`worker_exited`).
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "integer")]
    max_attempts: Option<i64>,
    /// Default `continue`.
    on_error: Option<OnErrorDto>,
    /// Higher runs first; equal priorities share the pool fairly. Default 0.
    #[serde(default, deserialize_with = "integer")]
    priority: Option<i32>,
    /// Free-form labels, returned as given: a JSON object of at most 64 KiB, nested at most
    /// 100 levels deep. Default `{}`.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Box<RawValue>>,
    /// At most this many of the job's chunks run at once across all workers, pipelined ones
    /// included (1 to 1000000), like `Pool(processes=N)`. Default: no cap.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer"
    )]
    #[schema(minimum = 1, maximum = 1_000_000)]
    max_concurrency: Option<i64>,
    /// How items, kwargs values and values travel: `json` (default) or `pickle` (base64
    /// pickles, opaque to poold). A codec no worker accepts is a 422 `unsupported_codec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    codec: Option<CodecDto>,
}

/// An integer field: a JSON integer, or a number without a fractional part (`2.0`), which JSON
/// Schema counts as an integer too.
fn integer<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let whole = number.as_i64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
            .map(|f| f as i64)
    });
    let whole =
        whole.ok_or_else(|| D::Error::custom(format!("expected an integer, got {number}")))?;
    T::try_from(whole)
        .map(Some)
        .map_err(|_| D::Error::custom(format!("{whole} is out of range")))
}

impl CreateJob {
    /// Whether the document has `items` (a JSON body must; NDJSON's line 1 must not), and how
    /// many.
    pub fn item_count(&self) -> Option<u64> {
        self.items.as_ref().map(|count| count.0)
    }

    /// The service's request (every field but the items).
    pub fn into_request(self) -> JobRequest {
        JobRequest {
            function: self.function,
            kwargs: self.kwargs,
            star: self.star,
            chunksize: self.chunksize,
            timeout_s: self.timeout_s,
            max_attempts: self.max_attempts,
            on_error: self.on_error.map(Into::into),
            priority: self.priority,
            metadata: self.metadata,
            codec: self.codec.map(Into::into),
            max_concurrency: self.max_concurrency,
        }
    }

    /// The SHA-256 of the request in its normalized form, for `Idempotency-Key`: the document
    /// serialized again (fields in their order, `items` as sent), so that a repeat with other
    /// whitespace or field order is the same request. `body` is where its items are.
    pub fn request_hash(&self, body: &[u8]) -> Result<String, String> {
        let fields = serde_json::to_string(self).expect("a parsed request serializes");
        let function = serde_json::to_string(&self.function).expect("a string serializes");
        let prefix = format!("{{\"function\":{function},");
        let rest = fields
            .strip_prefix(&prefix)
            .expect("serialized fields start with the function");
        let mut hash = Sha256::new();
        hash.update(prefix.as_bytes());
        hash.update(b"\"items\":[");
        let mut first = true;
        for_each_item(body, |item| {
            if !first {
                hash.update(b",");
            }
            first = false;
            hash.update(item.get().as_bytes());
            Ok(())
        })?;
        hash.update(b"],");
        hash.update(rest.as_bytes());
        Ok(format!("{:x}", hash.finalize()))
    }
}

/// The number of items of a document's `items`, counted without keeping them.
#[derive(Debug)]
pub struct ItemCount(u64);

fn never_serialized(_: &Option<ItemCount>) -> bool {
    true
}

impl Serialize for ItemCount {
    /// Never called (`items` is skipped); the count, should that change.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ItemCount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Count;
        impl<'de> Visitor<'de> for Count {
            type Value = ItemCount;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of items")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ItemCount, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(ItemCount(n))
            }
        }
        deserializer.deserialize_seq(Count)
    }
}

/// Call `each` for every item of the body's `items`, in order, each borrowed from the body.
/// The body was already read as a [`CreateJob`], so only `each`'s error can stop it.
pub fn for_each_item<'b>(
    body: &'b [u8],
    each: impl FnMut(&'b RawValue) -> Result<(), String>,
) -> Result<(), String> {
    let mut failure = None;
    let seed = Items {
        each,
        failure: &mut failure,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    match seed.deserialize(&mut deserializer) {
        Ok(()) => Ok(()),
        Err(e) => Err(failure.unwrap_or_else(|| e.to_string())),
    }
}

/// The body's object, whose `items` go to `each` (other fields are skipped).
struct Items<'f, F> {
    each: F,
    failure: &'f mut Option<String>,
}

impl<'de, F: FnMut(&'de RawValue) -> Result<(), String>> DeserializeSeed<'de> for Items<'_, F> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, F: FnMut(&'de RawValue) -> Result<(), String>> Visitor<'de> for Items<'_, F> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a job")
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        // Every entry is visited (the rest skipped), so the object ends where the parser
        // expects it to.
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "items" {
                map.next_value_seed(ItemSeq {
                    each: &mut self.each,
                    failure: &mut *self.failure,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct ItemSeq<'a, F> {
    each: &'a mut F,
    failure: &'a mut Option<String>,
}

impl<'de, F: FnMut(&'de RawValue) -> Result<(), String>> DeserializeSeed<'de> for ItemSeq<'_, F> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(&'de RawValue) -> Result<(), String>> Visitor<'de> for ItemSeq<'_, F> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of items")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if let Err(e) = (self.each)(item) {
                *self.failure = Some(e);
                return Err(de::Error::custom("stopped"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_counted_then_read_one_by_one_in_order() {
        let body = br#"{"items": [1, {"a": [2]}, "x"], "function": "f", "kwargs": {"k": 1}}"#;
        let job: CreateJob = serde_json::from_slice(body).unwrap();
        assert_eq!(job.item_count(), Some(3));
        let mut seen = Vec::new();
        for_each_item(body, |item| {
            seen.push(item.get().to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["1", r#"{"a": [2]}"#, r#""x""#]);
        let stopped = for_each_item(body, |item| match item.get() {
            "\"x\"" => Err("no x".into()),
            _ => Ok(()),
        });
        assert_eq!(stopped, Err("no x".to_string()));
    }

    #[test]
    fn the_request_hash_ignores_field_order_and_whitespace() {
        let a = br#"{"function": "f", "items": [1, 2], "chunksize": 2}"#;
        let b = br#"{"chunksize":2,"items":[1, 2],"function":"f"}"#;
        let c = br#"{"function": "f", "items": [1, 3], "chunksize": 2}"#;
        let hash = |body: &[u8]| {
            let job: CreateJob = serde_json::from_slice(body).unwrap();
            job.request_hash(body).unwrap()
        };
        assert_eq!(hash(a), hash(b));
        assert_ne!(hash(a), hash(c));
        // As the landed version hashed it: the document serialized with its items.
        let landed = br#"{"function":"f","items":[1,2],"kwargs":null,"star":false,"chunksize":2,"timeout_s":null,"max_attempts":null,"on_error":null,"priority":null,"metadata":null}"#;
        assert_eq!(hash(a), format!("{:x}", Sha256::digest(landed)));
    }
}
