//! Cutting a job's items into chunks, for the store and (for a small job) for the supervisor
//! directly. Used by the job service for JSON bodies and NDJSON uploads alike.
//!
//! A chunk holds at most `chunksize` items and about [`limits::MAX_CHUNK_BYTES`] of item JSON
//! (its first item is always taken). Chunks are written into *pieces* of about [`PIECE_BYTES`],
//! the store's input (`store::NewJob::pieces`): a JSON array of `[start, size, "items"]`, each
//! chunk's items as one JSON string, so the database stores them without parsing them. Items
//! are sent to workers as they came, so an item holding a raw line break (a pretty-printed
//! body) is compacted first: a task must fit on one line.

use std::fmt::Write;

use serde_json::value::RawValue;

use crate::limits;
use crate::model::Chunk;

/// A piece is handed to the store once it holds this many bytes.
pub const PIECE_BYTES: usize = 1 << 20;

/// Jobs whose chunks hold at most this much JSON are handed to the supervisor with their
/// chunks, so that it runs them without reading them back.
const HANDOFF_BYTES: usize = 64 * 1024;

pub struct ChunkBatcher {
    chunksize: u32,
    /// Items pushed so far: the index the next item gets.
    next_index: u64,
    /// The chunk being filled: `[a,b` without its closing bracket.
    current: String,
    current_start: u64,
    current_items: u32,
    /// Full chunks not yet taken: `[[0,2,"[…]"],…` without its closing bracket.
    piece: String,
    piece_chunks: u64,
    piece_items: u64,
    /// The chunks themselves, while the job is small enough to hand over (see
    /// [`HANDOFF_BYTES`]); None once it is not, or when not asked for.
    kept: Option<Vec<Chunk>>,
    kept_bytes: usize,
}

/// Full chunks taken from a batcher.
pub struct Piece {
    /// The store's input (see the module doc).
    pub json: String,
    pub chunks: u64,
    pub items: u64,
}

impl ChunkBatcher {
    /// `keep`: also keep the chunks for a direct hand-off while the job is small.
    pub fn new(chunksize: u32, keep: bool) -> Self {
        Self {
            chunksize: chunksize.max(1),
            next_index: 0,
            current: String::new(),
            current_start: 0,
            current_items: 0,
            piece: String::new(),
            piece_chunks: 0,
            piece_items: 0,
            kept: keep.then(Vec::new),
            kept_bytes: 0,
        }
    }

    /// Add one item (valid JSON text).
    pub fn push(&mut self, item: &str) {
        if self.current_items == 0 {
            self.current.push('[');
            self.current_start = self.next_index;
        } else {
            self.current.push(',');
        }
        if item.contains(['\n', '\r']) {
            compact_into(&mut self.current, item);
        } else {
            self.current.push_str(item);
        }
        self.current_items += 1;
        self.next_index += 1;
        if self.current_items == self.chunksize || self.current.len() >= limits::MAX_CHUNK_BYTES {
            self.close_current();
        }
    }

    /// Items pushed so far.
    pub fn items(&self) -> u64 {
        self.next_index
    }

    fn close_current(&mut self) {
        self.current.push(']');
        self.piece
            .push(if self.piece.is_empty() { '[' } else { ',' });
        let _ = write!(
            self.piece,
            "[{},{},",
            self.current_start, self.current_items
        );
        self.piece
            .push_str(&serde_json::to_string(&self.current).expect("a string serializes"));
        self.piece.push(']');
        if let Some(kept) = &mut self.kept {
            self.kept_bytes += self.current.len();
            if self.kept_bytes <= HANDOFF_BYTES {
                kept.push(Chunk {
                    start_index: self.current_start,
                    size: u64::from(self.current_items),
                    items: RawValue::from_string(self.current.clone()).expect("items are JSON"),
                    lease: 0,
                    attempts: 0,
                });
            } else {
                self.kept = None;
            }
        }
        self.current.clear();
        self.piece_chunks += 1;
        self.piece_items += u64::from(self.current_items);
        self.current_items = 0;
    }

    /// Full chunks are waiting to be taken.
    pub fn has_full(&self) -> bool {
        self.piece_chunks > 0
    }

    /// How many full chunks are waiting to be taken.
    pub fn full_chunks(&self) -> u64 {
        self.piece_chunks
    }

    /// Bytes of full chunks waiting to be taken.
    pub fn full_bytes(&self) -> usize {
        self.piece.len()
    }

    /// Take the full chunks (None when there are none).
    pub fn take_full(&mut self) -> Option<Piece> {
        if self.piece_chunks == 0 {
            return None;
        }
        let mut json = std::mem::take(&mut self.piece);
        json.push(']');
        let piece = Piece {
            json,
            chunks: self.piece_chunks,
            items: self.piece_items,
        };
        self.piece_chunks = 0;
        self.piece_items = 0;
        Some(piece)
    }

    /// End the last (partial) chunk, so that [`ChunkBatcher::take_full`] takes every chunk.
    pub fn close(&mut self) {
        if self.current_items > 0 {
            self.close_current();
        }
    }

    /// The chunks kept for a direct hand-off, if the job stayed small.
    pub fn kept(&mut self) -> Option<Vec<Chunk>> {
        self.kept.take()
    }
}

/// Append `item` (valid JSON) without the whitespace between its tokens.
fn compact_into(out: &mut String, item: &str) {
    let mut in_string = false;
    let mut escaped = false;
    for c in item.chars() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks_of(piece: &Piece) -> Vec<(u64, u64, serde_json::Value)> {
        let entries: Vec<(u64, u64, String)> = serde_json::from_str(&piece.json).unwrap();
        entries
            .into_iter()
            .map(|(start, size, items)| (start, size, serde_json::from_str(&items).unwrap()))
            .collect()
    }

    #[test]
    fn cuts_full_chunks_and_a_partial_last_one() {
        let mut batcher = ChunkBatcher::new(2, true);
        assert!(batcher.take_full().is_none());
        for item in ["1", "\"a\"", "[3]"] {
            batcher.push(item);
        }
        let first = batcher.take_full().unwrap();
        assert_eq!((first.chunks, first.items), (1, 2));
        assert_eq!(chunks_of(&first), [(0, 2, serde_json::json!([1, "a"]))]);
        batcher.push("{\"k\": \"x\\\"y\"}");
        batcher.push("5");
        batcher.close();
        let rest = batcher.take_full().unwrap();
        assert_eq!(
            chunks_of(&rest),
            [
                (2, 2, serde_json::json!([[3], {"k": "x\"y"}])),
                (4, 1, serde_json::json!([5]))
            ]
        );
        let kept = batcher.kept().unwrap();
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[1].items.get(), r#"[[3],{"k": "x\"y"}]"#);
    }

    #[test]
    fn ends_a_chunk_at_its_byte_limit() {
        let big = format!("\"{}\"", "x".repeat(limits::MAX_CHUNK_BYTES / 2));
        let mut batcher = ChunkBatcher::new(1000, false);
        for _ in 0..3 {
            batcher.push(&big);
        }
        batcher.push("1");
        batcher.close();
        let piece = batcher.take_full().unwrap();
        let shape: Vec<(u64, u64)> = chunks_of(&piece).iter().map(|(s, n, _)| (*s, *n)).collect();
        assert_eq!(shape, [(0, 2), (2, 2)]);
        assert!(batcher.kept().is_none());
    }

    #[test]
    fn line_breaks_inside_an_item_are_compacted_away() {
        let mut batcher = ChunkBatcher::new(10, true);
        batcher.push("[1,\n  {\"a\": \"b\\nc d\"},\r\n 2]");
        batcher.close();
        let kept = batcher.kept().unwrap();
        assert_eq!(kept[0].items.get(), r#"[[1,{"a":"b\nc d"},2]]"#);
    }
}
