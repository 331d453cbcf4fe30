//! Pages of results, read from whole chunk rows: the shape every backend returns them in, and
//! how a page walks them item by item without copying a value.
//!
//! A backend answers a read of done chunks with one text, the chunks' entries separated by
//! U+001F (which valid JSON text never holds raw): `start size failed seq outcomes`. One text
//! per read means one hand-off from the database for many chunks, and the outcomes stay in the
//! text: [`ResultsPage::for_each`] borrows every value from it (see `crate::outcomes`).

use crate::outcomes::{OutcomeRef, each_outcome};

use super::{Error, Result};

/// Separates chunk entries in a backend's answer.
pub const ENTRY_SEPARATOR: char = '\u{1f}';

/// One chunk entry of a backend's answer.
struct Entry<'a> {
    start: u64,
    size: u64,
    failed: u64,
    seq: u64,
    outcomes: &'a str,
}

fn entries(text: &str) -> impl Iterator<Item = Result<Entry<'_>>> {
    text.split(ENTRY_SEPARATOR)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let mut fields = entry.splitn(5, ' ');
            let mut number = || {
                fields
                    .next()
                    .and_then(|f| f.parse::<u64>().ok())
                    .ok_or_else(|| Error::Corrupt(format!("a chunk entry: {:.80}", entry)))
            };
            let (start, size, failed, seq) = (number()?, number()?, number()?, number()?);
            let outcomes = fields
                .next()
                .ok_or_else(|| Error::Corrupt("a chunk entry without outcomes".into()))?;
            Ok(Entry {
                start,
                size,
                failed,
                seq,
                outcomes,
            })
        })
}

/// Where a read in completion order stands: every chunk up to `after_seq` read, and `skip`
/// items of the chunks after it (usually of the next one); `position` results read in all
/// (the event id of the next one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompletionCursor {
    position: u64,
    after_seq: Option<u64>,
    skip: u64,
    /// Made from a position alone (a resumed stream): the chunks are found on first use.
    unresolved: bool,
}

impl CompletionCursor {
    /// The cursor before the result at `position` (0 for the start).
    pub fn at(position: u64) -> Self {
        Self {
            position,
            unresolved: position > 0,
            ..Self::default()
        }
    }

    /// Results read so far: the event id of the next one.
    pub fn position(&self) -> u64 {
        self.position
    }

    pub(super) fn unresolved(&self) -> Option<u64> {
        self.unresolved.then_some(self.position)
    }

    /// Place the cursor at `position` given every done chunk's `(seq, size)` in seq order.
    pub(super) fn resolve(&mut self, position: u64, sizes: &[(u64, u64)]) {
        let mut before = 0;
        for &(seq, size) in sizes {
            if before + size > position {
                break;
            }
            before += size;
            self.after_seq = Some(seq);
        }
        self.skip = position - before;
        self.unresolved = false;
    }
}

enum Mode {
    ByIndex { from: u64, only_failed: bool },
    ByCompletion { cursor: CompletionCursor },
}

/// A page of results: chunk texts read from the store, walked item by item.
pub struct ResultsPage {
    texts: Vec<String>,
    mode: Mode,
    limit: usize,
    /// Results in the page so far (for how many more chunks to read).
    counted: usize,
    /// The last chunk read: (start, size, seq).
    last: Option<(u64, u64, u64)>,
    /// In completion order: items still to skip when counting chunks as they are added.
    skip_left: u64,
}

impl ResultsPage {
    pub(super) fn by_index(from: u64, limit: usize, only_failed: bool) -> Self {
        Self {
            texts: Vec::new(),
            mode: Mode::ByIndex { from, only_failed },
            limit,
            counted: 0,
            last: None,
            skip_left: 0,
        }
    }

    pub(super) fn by_completion(cursor: CompletionCursor, limit: usize) -> Self {
        Self {
            texts: Vec::new(),
            skip_left: cursor.skip,
            mode: Mode::ByCompletion { cursor },
            limit,
            counted: 0,
            last: None,
        }
    }

    /// How many more results the page could take.
    pub(super) fn missing(&self) -> usize {
        self.limit.saturating_sub(self.counted)
    }

    /// By index: the item index the next read starts at.
    pub(super) fn next_start(&self) -> u64 {
        match (&self.mode, self.last) {
            (_, Some((start, size, _))) => start + size,
            (Mode::ByIndex { from, .. }, None) => *from,
            (Mode::ByCompletion { .. }, None) => 0,
        }
    }

    /// In completion order: the last chunk already read (its seq).
    pub(super) fn next_seq(&self) -> Option<u64> {
        match (&self.mode, self.last) {
            (_, Some((_, _, seq))) => Some(seq),
            (Mode::ByCompletion { cursor }, None) => cursor.after_seq,
            (Mode::ByIndex { .. }, None) => None,
        }
    }

    /// Add a backend's answer to a read of `asked` chunks. Returns whether to read more: the
    /// page is not full and the read came back full (more chunks may follow).
    pub(super) fn add(&mut self, text: String, asked: u32) -> Result<bool> {
        let mut read = 0;
        for entry in entries(&text) {
            let entry = entry?;
            read += 1;
            let usable = match &self.mode {
                Mode::ByIndex { from, only_failed } => {
                    let from_here = entry.size - from.saturating_sub(entry.start).min(entry.size);
                    if *only_failed {
                        entry.failed.min(from_here)
                    } else {
                        from_here
                    }
                }
                Mode::ByCompletion { .. } => {
                    let skip = self.skip_left.min(entry.size);
                    self.skip_left -= skip;
                    entry.size - skip
                }
            };
            self.counted += usable as usize;
            self.last = Some((entry.start, entry.size, entry.seq));
        }
        self.texts.push(text);
        Ok(self.counted < self.limit && read == asked as usize)
    }

    /// Call `each(event_id, item_index, outcome)` for each result of the page, in order, at
    /// most `limit` of them; the event id is the item index in index order and the position
    /// in completion order. Returns how many there were.
    pub fn for_each<'a>(
        &'a self,
        mut each: impl FnMut(u64, u64, &OutcomeRef<'a>),
    ) -> Result<usize> {
        let mut given = 0;
        let mut to_skip = match &self.mode {
            Mode::ByCompletion { cursor } => cursor.skip,
            Mode::ByIndex { .. } => 0,
        };
        for text in &self.texts {
            for entry in entries(text) {
                let entry = entry?;
                if given >= self.limit {
                    return Ok(given);
                }
                let skip = to_skip.min(entry.size);
                to_skip -= skip;
                each_outcome(entry.outcomes, |i, outcome| {
                    if given >= self.limit || i < skip {
                        return;
                    }
                    let index = entry.start + i;
                    match &self.mode {
                        Mode::ByIndex { from, only_failed } => {
                            if index < *from || (*only_failed && outcome.error().is_none()) {
                                return;
                            }
                            each(index, index, &outcome);
                        }
                        Mode::ByCompletion { cursor } => {
                            each(cursor.position + given as u64, index, &outcome);
                        }
                    }
                    given += 1;
                })
                .map_err(|e| Error::Corrupt(format!("stored outcomes: {e}")))?;
            }
        }
        Ok(given)
    }

    /// In completion order: the cursor after this page.
    pub(super) fn cursor_after(&self) -> CompletionCursor {
        let Mode::ByCompletion { cursor } = &self.mode else {
            return CompletionCursor::default();
        };
        let mut next = cursor.clone();
        let mut left = self.limit as u64;
        for text in &self.texts {
            for entry in entries(text).flatten() {
                let skip = next.skip.min(entry.size);
                let available = entry.size - skip;
                if available <= left {
                    left -= available;
                    next.position += available;
                    next.after_seq = Some(entry.seq);
                    next.skip -= skip;
                } else {
                    next.position += left;
                    next.skip = skip + left;
                    return next;
                }
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks of `sizes` items with seq 1, 2, …, each item's value its index.
    fn chunks(sizes: &[u64]) -> String {
        let mut start = 0;
        let mut text = String::new();
        for (n, size) in sizes.iter().enumerate() {
            let outcomes: Vec<String> = (start..start + size)
                .map(|i| format!("{{\"value\":{i}}}"))
                .collect();
            text.push_str(&format!(
                "{start} {size} 0 {} [{}]{ENTRY_SEPARATOR}",
                n + 1,
                outcomes.join(",")
            ));
            start += size;
        }
        text
    }

    fn ids(page: &ResultsPage) -> Vec<(u64, u64)> {
        let mut seen = Vec::new();
        page.for_each(|id, index, _| seen.push((id, index)))
            .unwrap();
        seen
    }

    #[test]
    fn a_page_by_index_starts_inside_a_chunk_and_stops_at_its_limit() {
        let mut page = ResultsPage::by_index(3, 5, false);
        assert!(!page.add(chunks(&[7, 7]), 5).unwrap());
        assert_eq!(ids(&page), (3..8).map(|i| (i, i)).collect::<Vec<_>>());
        assert_eq!(page.next_start(), 14);
    }

    #[test]
    fn completion_cursors_resume_inside_chunks() {
        let sizes = [(1, 3), (2, 3), (3, 3)];
        let mut cursor = CompletionCursor::at(4);
        cursor.resolve(4, &sizes);
        assert_eq!((cursor.after_seq, cursor.skip), (Some(1), 1));
        let mut page = ResultsPage::by_completion(cursor, 3);
        page.add(
            chunks(&[3, 3, 3])
                .split(ENTRY_SEPARATOR)
                .skip(1)
                .collect::<Vec<_>>()
                .join(&ENTRY_SEPARATOR.to_string()),
            2,
        )
        .unwrap();
        assert_eq!(ids(&page), [(4, 4), (5, 5), (6, 6)]);
        let next = page.cursor_after();
        assert_eq!((next.position, next.after_seq, next.skip), (7, Some(2), 1));
    }
}
