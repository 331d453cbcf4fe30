// The jobs list (`/ui/jobs?status=&cursor=`): newest first, filtered by status, a page of
// PAGE jobs at a time (`GET /v1/jobs?limit=&cursor=`), so it stays quick with 10,000 jobs.
// Only the page on screen is polled, once a second; its rows are updated in place (keyed by
// job id) with a live progress bar, done/failed/total, rate, ETA and age.

import { getJson } from './api.js';
import {
  age, count, duration, fill, h, isFinished, link, progressBar, rate, shortId, speed, statusBadge,
} from './dom.js';

const PAGE = 50;
const STATUSES = ['queued', 'running', 'completed', 'failed', 'cancelled'];

// The cursors of the pages visited since the newest one (null), for "Newer" and the page's
// position; kept per status filter, and cut back when the browser goes back.
const trail = { status: null, cursors: [null] };

export function mount(ctx) {
  const status = STATUSES.includes(ctx.query.get('status')) ? ctx.query.get('status') : null;
  const cursor = ctx.query.get('cursor');
  const at = trail.status === status ? trail.cursors.indexOf(cursor) : -1;
  if (at >= 0) {
    trail.cursors.length = at + 1;
  } else {
    trail.status = status;
    trail.cursors = [cursor]; // a reload deep in the list: its position is not known
  }
  const position = trail.cursors[0] === null ? (trail.cursors.length - 1) * PAGE : null;
  const href = (s, c) => {
    const q = new URLSearchParams();
    if (s) q.set('status', s);
    if (c) q.set('cursor', c);
    return `/ui/jobs${q.size ? `?${q}` : ''}`;
  };

  const filters = h('nav.filters', { 'aria-label': 'Filter by status' },
    [null, ...STATUSES].map((s) => {
      const a = link(href(s, null), s || 'all');
      if (s === status) a.setAttribute('aria-current', 'page');
      return a;
    }));
  const body = h('tbody');
  const table = h('div.table-scroll', {}, h('table.table.jobs', {},
    h('thead', {}, h('tr', {},
      h('th', {}, 'Job'), h('th.hide-narrow', {}, 'Function'), h('th', {}, 'Status'),
      h('th.progress-col', {}, 'Progress'), h('th.num.hide-narrow', {}, 'Done'),
      h('th.num.hide-narrow', {}, 'Failed'), h('th.num.hide-narrow', {}, 'Total'),
      h('th.num.hide-narrow', {}, 'Rate'), h('th.num.hide-narrow', {}, 'ETA'), h('th.num.hide-narrow', {}, 'Age'))),
    body));
  const empty = h('p.muted.empty', { hidden: true });
  const newer = h('button.button.small', { type: 'button', id: 'newer-page' }, '‹ Newer');
  const older = h('button.button.small', { type: 'button', id: 'older-page' }, 'Older ›');
  const where = h('span.muted', {});
  fill(ctx.root,
    h('div.page-head', {}, h('h1.page-title', {}, 'Jobs'), filters),
    h('section.panel.flush', {}, table, empty,
      h('div.pager', {}, newer, where, older)));

  newer.disabled = !cursor;
  newer.addEventListener('click', () => {
    const previous = trail.cursors.length > 1 ? trail.cursors[trail.cursors.length - 2] : null;
    ctx.navigate(href(status, previous));
  });
  let nextCursor = null;
  older.addEventListener('click', () => {
    if (!nextCursor) return;
    trail.cursors.push(nextCursor);
    ctx.navigate(href(status, nextCursor));
  });

  const rows = new Map(); // job id -> row
  ctx.poll(async (signal) => {
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (status) q.set('status', status);
    if (cursor) q.set('cursor', cursor);
    const page = await getJson(`/v1/jobs?${q}`, { signal });
    nextCursor = page.next_cursor;
    older.disabled = !nextCursor;
    const now = Date.now();
    const seen = new Set();
    page.jobs.forEach((job, i) => {
      seen.add(job.id);
      let row = rows.get(job.id);
      if (!row) {
        row = jobRow(job);
        rows.set(job.id, row);
      }
      row.update(job, now);
      if (body.children[i] !== row) body.insertBefore(row, body.children[i] || null);
    });
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.remove();
        rows.delete(id);
      }
    }
    empty.hidden = page.jobs.length > 0;
    empty.textContent = status
      ? `No ${status} jobs${cursor ? ' on this page' : ''}.`
      : 'No jobs yet. Submit one with `poold submit` or POST /v1/jobs.';
    where.textContent = !page.jobs.length ? ''
      : position === null ? `${page.jobs.length} older jobs`
        : `${count(position + 1)}–${count(position + page.jobs.length)}`;
  }, 1000);
}

function jobRow(job) {
  // On a phone only the id, status and bar show (the bar tells done and failed apart).
  const cells = {
    status: h('td'),
    bar: progressBar(job),
    done: h('td.num.hide-narrow'),
    failed: h('td.num.hide-narrow'),
    total: h('td.num.hide-narrow'),
    rate: h('td.num.hide-narrow'),
    eta: h('td.num.hide-narrow'),
    age: h('td.num.muted.hide-narrow'),
  };
  const row = h('tr', { dataset: { jobId: job.id } },
    h('td', {}, link(`/ui/jobs/${job.id}`, h('span.mono', {}, shortId(job.id)))),
    h('td.function.hide-narrow', {}, job.function),
    cells.status,
    h('td.progress-col', {}, cells.bar),
    cells.done, cells.failed, cells.total, cells.rate, cells.eta, cells.age);
  let shownStatus = null;
  row.update = (j, now) => {
    if (j.status !== shownStatus) {
      fill(cells.status, statusBadge(j.status));
      shownStatus = j.status;
    }
    cells.bar.update(j);
    const { rate: perSecond, eta } = speed(j, now);
    cells.done.textContent = count(j.done);
    cells.failed.textContent = count(j.failed);
    cells.failed.classList.toggle('bad', j.failed > 0);
    cells.total.textContent = j.total === null ? 'uploading' : count(j.total);
    cells.rate.textContent = j.started_at ? rate(perSecond) : '–';
    cells.eta.textContent = isFinished(j) ? '–' : duration(eta);
    cells.age.textContent = age(j.created_at, now);
  };
  return row;
}
