// The results table of the job page: a page of PAGE results in index order
// (`GET /v1/jobs/{id}/results?offset=&limit=`, or only the item errors with `failed=true`),
// never the whole job, so a 1,000,000-item job costs the browser one page. A click (or Enter)
// on a row folds open its error's traceback, its log and its full value.

import { getJson } from './api.js';
import { clip, count, fill, h, json } from './dom.js';

const PAGE = 50;
const VALUE_CHARS = 160;

/**
 * `table = resultsTable(ctx, jobId, {failedOnly, index})`: `index` opens the page holding that
 * item with its row unfolded. `table.refresh()` reloads the page when it may have changed.
 */
export function resultsTable(ctx, jobId, { failedOnly = false, index = null } = {}) {
  const state = {
    failedOnly,
    offset: index === null ? 0 : (failedOnly ? index : Math.floor(index / PAGE) * PAGE),
    back: [], // offsets of the pages before this one
    open: new Set(index === null ? [] : [index]),
    page: null,
    loading: null,
    lastLoad: 0,
  };
  const body = h('tbody');
  const table = h('div.table-scroll', { hidden: true }, h('table.table.results-table', {},
    h('thead', {}, h('tr', {}, h('th.num', {}, 'Index'), h('th', {}, 'Result'))), body));
  const empty = h('p.muted.empty', { hidden: true });
  const prev = h('button.button.small', { type: 'button', id: 'results-prev' }, '‹ Previous');
  const next = h('button.button.small', { type: 'button', id: 'results-next' }, 'Next ›');
  const where = h('span.muted', { id: 'results-range' });
  const goInput = h('input.input', { type: 'number', min: 0, placeholder: 'index', 'aria-label': 'Go to item index' });
  const goForm = h('form.goto', {}, goInput, h('button.button.small', { type: 'submit' }, 'Go'));
  const modes = h('div.segmented', { role: 'group', 'aria-label': 'Which results' },
    h('button', { type: 'button', 'data-mode': 'all' }, 'All'),
    h('button', { type: 'button', 'data-mode': 'failed', id: 'results-failed-only' }, 'Failed only'));
  const el = h('section.panel.flush.results', {},
    h('div.panel-head.padded', {}, h('h2', {}, 'Results'), modes),
    table,
    empty,
    h('div.pager', {}, prev, where, goForm, next));

  const showModes = () => modes.querySelectorAll('button').forEach((b) => {
    b.setAttribute('aria-pressed', String((b.dataset.mode === 'failed') === state.failedOnly));
  });
  showModes();
  const go = (offset, back) => {
    state.offset = offset;
    state.back = back;
    load();
  };
  modes.addEventListener('click', (event) => {
    const mode = event.target.closest('button')?.dataset.mode;
    if (!mode || (mode === 'failed') === state.failedOnly) return;
    state.failedOnly = mode === 'failed';
    const url = new URL(location.href);
    if (state.failedOnly) url.searchParams.set('failed', '1');
    else url.searchParams.delete('failed');
    url.searchParams.delete('index');
    history.replaceState(null, '', url.pathname + url.search);
    showModes();
    go(0, []);
  });
  prev.addEventListener('click', () => {
    const back = [...state.back];
    const offset = back.pop() ?? Math.max(0, state.offset - PAGE);
    go(offset, back);
  });
  next.addEventListener('click', () => {
    if (state.page?.next_offset != null) go(state.page.next_offset, [...state.back, state.offset]);
  });
  goForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const target = Number.parseInt(goInput.value, 10);
    if (!Number.isFinite(target) || target < 0) return;
    state.open.add(target);
    go(state.failedOnly ? target : Math.floor(target / PAGE) * PAGE, []);
  });

  async function load() {
    const offset = state.offset;
    const q = new URLSearchParams({ offset: String(offset), limit: String(PAGE) });
    if (state.failedOnly) q.set('failed', 'true');
    state.lastLoad = Date.now();
    try {
      const page = await getJson(`/v1/jobs/${jobId}/results?${q}`, { signal: ctx.signal });
      if (offset !== state.offset) return; // the user moved on meanwhile
      state.page = page;
      show();
    } catch (e) {
      ctx.error(e);
    }
  }

  function show() {
    const { results, next_offset: nextOffset } = state.page;
    fill(body, results.flatMap(row));
    table.hidden = results.length === 0;
    empty.hidden = results.length > 0;
    empty.textContent = state.failedOnly
      ? (state.offset ? 'No failed items from here on.' : 'No failed items.')
      : (state.offset ? 'No results from here on yet.' : 'No results yet.');
    prev.disabled = state.offset === 0 && !state.back.length;
    next.disabled = !(results.length === PAGE && nextOffset != null);
    where.textContent = results.length
      ? `items ${count(results[0].index)}–${count(results[results.length - 1].index)}`
      : '';
  }

  function row(result) {
    const hasMore = Boolean(result.error || result.log)
      || (result.value !== undefined && JSON.stringify(result.value).length > VALUE_CHARS);
    const outcome = result.error
      ? h('span.outcome', {}, h('span.badge.status-failed', {}, result.error.type), ' ',
        h('span.error-message', {}, clip(result.error.message, 300)))
      : h('span.mono.value', {}, json(result.value, VALUE_CHARS));
    const tr = h(`tr.result${result.error ? '.failed' : ''}${hasMore ? '.expandable' : ''}`,
      { dataset: { index: result.index }, tabindex: hasMore ? 0 : null, 'aria-expanded': hasMore ? 'false' : null },
      h('td.num.mono', {}, String(result.index)),
      h('td', {}, outcome, result.log ? h('span.tag', { title: 'This item printed something' }, 'log') : null));
    if (!hasMore) return [tr];
    const detail = h('tr.detail', { hidden: true }, h('td', { colspan: 2 }, details(result)));
    const toggle = () => {
      detail.hidden = !detail.hidden;
      tr.setAttribute('aria-expanded', String(!detail.hidden));
      if (detail.hidden) state.open.delete(result.index);
      else state.open.add(result.index);
    };
    tr.addEventListener('click', toggle);
    tr.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        toggle();
      }
    });
    if (state.open.has(result.index)) {
      detail.hidden = false;
      tr.setAttribute('aria-expanded', 'true');
    }
    return [tr, detail];
  }

  load();
  return {
    el,
    /**
     * The job changed: reload the page if it was not full (new results may belong on it), at
     * most once a second; `force` (the job ended) reloads it now.
     */
    refresh(force = false) {
      const partial = !state.page || state.page.results.length < PAGE;
      if (force || (partial && Date.now() - state.lastLoad >= 1000)) load();
    },
  };
}

function details(result) {
  const parts = [];
  if (result.error) {
    parts.push(h('div.detail-label', {}, `${result.error.type}: ${result.error.message}`));
    parts.push(result.error.traceback
      ? h('pre.traceback', {}, result.error.traceback)
      : h('p.muted', {}, 'The worker sent no traceback for this error.'));
  } else {
    parts.push(h('div.detail-label', {}, 'Value'), h('pre.value', {}, JSON.stringify(result.value, null, 2)));
  }
  if (result.log) parts.push(h('div.detail-label', {}, 'Log (what the function printed)'), h('pre.log', {}, result.log));
  return parts;
}
