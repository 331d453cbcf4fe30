// The overview (`/`): the pool and its workers, grouped by node (`GET /v1/nodes`);
// accepting or closed, with the close/open button; queued chunks and items; a live
// chart of items finished per second; the latest failed items.
//
// Sources: `GET /v1/pool` every second (its workers' `items_completed`, summed and sampled,
// gives items per second: the difference between two samples over the time between them,
// never below 0 since a worker or node may vanish); `GET /v1/nodes` when the workers name a
// node (a server without it — a 404 — is shown as one pool); the queued and running jobs
// for the items still to do; the newest jobs with `failed > 0` and their first failed results
// (`/results?failed=true`).

import { getJson, post } from './api.js';
import { lineChart } from './chart.js';
import { age, axisNumber, clip, count, duration, fill, h, link, plural, rate, shortId } from './dom.js';

const WINDOW_S = 300;
const FAILED_JOBS = 5;
const FAILED_PER_JOB = 3;

// Kept across visits of the page, so the chart does not start empty each time.
const samples = []; // { t: ms, items: sum of items_completed }

export function mount(ctx) {
  const els = {
    pool: h('div.stat-value', { id: 'pool-state' }, '…'),
    poolButton: h('button.button', { type: 'button', id: 'pool-toggle', disabled: true }, '…'),
    workers: h('div.stat-value', {}, '…'),
    workersNote: h('div.stat-note', {}, ''),
    queue: h('div.stat-value', { id: 'queued-chunks' }, '…'),
    queueNote: h('div.stat-note', { id: 'queued-items' }, ''),
    rate: h('div.stat-value', { id: 'items-rate' }, '…'),
    workersPanel: h('div', { id: 'workers' }),
    failed: h('div', { id: 'failed-items' }, h('p.muted', {}, 'Loading…')),
    window: h('span.muted', {}, ''),
  };
  const chart = lineChart({
    label: 'Items finished per second over the last minutes',
    xLabel: (x) => (x >= 0 ? 'now' : `${duration(-x)} ago`),
    yLabel: axisNumber,
    signal: ctx.signal,
  });
  let pool = null;
  let nodes = null; // GET /v1/nodes, when the workers name nodes
  let nodesAvailable = true;

  fill(ctx.root,
    h('h1.page-title', {}, 'Overview'),
    h('section.stats', {},
      h('div.stat', {}, h('div.stat-label', {}, 'Pool'), els.pool, els.poolButton),
      h('div.stat', {}, h('div.stat-label', {}, 'Workers'), els.workers, els.workersNote),
      h('div.stat', {}, h('div.stat-label', {}, 'Queued'), els.queue, els.queueNote),
      h('div.stat', {}, h('div.stat-label', {}, 'Throughput'), els.rate,
        h('div.stat-note', {}, 'items finished per second'))),
    h('section.panel', {},
      h('div.panel-head', {}, h('h2', {}, 'Items finished per second'), els.window),
      chart.el),
    h('div.columns', {},
      h('section.panel.wide', {}, h('div.panel-head', {}, h('h2', {}, 'Workers')), els.workersPanel),
      h('section.panel', {}, h('div.panel-head', {}, h('h2', {}, 'Latest failed items')), els.failed)));

  els.poolButton.addEventListener('click', async () => {
    if (!pool) return;
    const closing = pool.accepting;
    if (closing && !(await ctx.confirm({
      title: 'Close the pool?',
      text: 'New jobs will get 503 pool_closed until the pool is opened again. Queued and running work goes on.',
      yes: 'Close pool',
    }))) return;
    els.poolButton.disabled = true;
    try {
      pool = await post(closing ? '/v1/pool/close' : '/v1/pool/open', ctx.signal);
      showPool(els, pool);
      showWorkers(els.workersPanel, pool, nodes, Date.now());
    } catch (e) {
      ctx.error(e);
    } finally {
      els.poolButton.disabled = false;
    }
  });

  ctx.poll(async (signal) => {
    pool = await getJson('/v1/pool', { signal });
    const now = Date.now();
    samples.push({ t: now, items: pool.workers.reduce((sum, w) => sum + (w.items_completed || 0), 0) });
    while (samples.length && samples[0].t < now - (WINDOW_S + 5) * 1000) samples.shift();
    let fresh = null;
    if (nodesAvailable && pool.workers.some((w) => w.node !== undefined && w.node !== null)) {
      try {
        fresh = (await getJson('/v1/nodes', { signal })).nodes;
      } catch (e) {
        if (e.status !== 404) throw e;
        nodesAvailable = false; // a single pool: show it as one
      }
    }
    nodes = fresh;
    const busy = pool.queued_chunks > 0 || pool.workers.some((w) => w.state === 'busy');
    const todo = busy ? await itemsToDo(signal) : 'nothing to do';
    showPool(els, pool);
    els.queueNote.textContent = todo;
    showWorkers(els.workersPanel, pool, nodes, now);
    showRate(els.rate, els.window, chart, now);
  }, 1000);

  ctx.poll(async (signal) => {
    const { jobs } = await getJson('/v1/jobs?limit=100', { signal });
    const withFailures = jobs.filter((j) => j.failed > 0).slice(0, FAILED_JOBS);
    const pages = await Promise.all(withFailures.map((j) => getJson(
      `/v1/jobs/${j.id}/results?failed=true&limit=${FAILED_PER_JOB}`, { signal })));
    showFailed(els.failed, withFailures, pages);
  }, 5000);
}

/** Items of the queued and running jobs without an outcome yet (the first pages of each). */
async function itemsToDo(signal) {
  const [running, queued] = await Promise.all(['running', 'queued'].map(
    (status) => getJson(`/v1/jobs?status=${status}&limit=200`, { signal })));
  const jobs = [...running.jobs, ...queued.jobs];
  const left = jobs.reduce((sum, j) => sum + (j.total === null ? 0 : Math.max(0, j.total - j.done)), 0);
  const more = running.next_cursor || queued.next_cursor ? 'at least ' : '';
  const uploading = jobs.some((j) => j.total === null) ? ' (and uploads in progress)' : '';
  return `${more}${plural(left, 'item')} to do in ${plural(jobs.length, 'job')}${uploading}`;
}

function showPool(els, pool) {
  els.pool.textContent = pool.accepting ? 'Accepting' : 'Closed';
  els.pool.dataset.accepting = String(pool.accepting);
  els.pool.className = `stat-value ${pool.accepting ? 'good' : 'bad'}`;
  els.poolButton.textContent = pool.accepting ? 'Close pool' : 'Open pool';
  els.poolButton.className = `button small ${pool.accepting ? 'danger' : 'primary'}`;
  els.poolButton.disabled = false;
  const busy = pool.workers.filter((w) => w.state === 'busy').length;
  const starting = pool.workers.filter((w) => w.state === 'starting').length;
  els.workers.textContent = `${busy} busy / ${pool.workers.length}`;
  els.workersNote.textContent = starting ? `${starting} starting` : `pool size ${pool.size}`;
  els.queue.textContent = `${count(pool.queued_chunks)} chunks`;
}

function showRate(rateEl, windowEl, chart, now) {
  const points = [];
  for (let i = 1; i < samples.length; i++) {
    const [a, b] = [samples[i - 1], samples[i]];
    const seconds = (b.t - a.t) / 1000;
    const x = (b.t - now) / 1000;
    // A long gap (the tab was hidden) is a break in the line, not a slope.
    if (seconds > 5) points.push({ x, y: null });
    else if (seconds > 0) points.push({ x, y: Math.max(0, b.items - a.items) / seconds });
  }
  const recent = samples.filter((s) => s.t >= now - 5000);
  const current = recent.length > 1
    ? Math.max(0, recent[recent.length - 1].items - recent[0].items)
      / ((recent[recent.length - 1].t - recent[0].t) / 1000)
    : null;
  rateEl.textContent = current === null ? '…' : rate(current);
  // The window grows from one minute to WINDOW_S as samples come, so a new page is not empty.
  const span = Math.min(WINDOW_S, Math.max(60, samples.length ? (now - samples[0].t) / 1000 : 0));
  const minutes = Math.ceil(span / 60 - 0.01);
  windowEl.textContent = minutes === 1 ? 'last minute' : `last ${minutes} minutes`;
  chart.draw(points, { xMin: -span, xMax: 0 });
}

function workerTable(workers) {
  if (!workers.length) return h('p.muted', {}, 'No workers.');
  return h('div.table-scroll', {}, h('table.table', {},
    h('thead', {}, h('tr', {}, ['Slot', 'PID', 'State', 'Job', 'Chunks', 'Items', 'Restarts']
      .map((t, i) => h(i > 3 ? 'th.num' : 'th', {}, t)))),
    h('tbody', {}, workers.map((w) => h('tr', { dataset: { pid: w.pid ?? '' } },
      h('td', {}, String(w.id)),
      h('td.mono', {}, w.pid === null ? '–' : String(w.pid)),
      h('td', {}, h(`span.badge.worker-${w.state}`, {}, w.state)),
      h('td', {}, w.job_id ? link(`/ui/jobs/${w.job_id}`, h('span.mono', {}, shortId(w.job_id))) : h('span.muted', {}, '–')),
      h('td.num', {}, count(w.tasks_completed)),
      h('td.num', {}, count(w.items_completed)),
      h('td.num', {}, count(w.restarts)))))));
}

function showWorkers(panel, pool, nodes, now) {
  const parts = [];
  if (pool.last_error) {
    parts.push(h('p.notice.warn', {}, `Workers cannot start: ${pool.last_error}`));
  }
  if (!nodes) {
    parts.push(workerTable(pool.workers));
  } else {
    for (const node of nodes) {
      const mine = pool.workers.filter((w) => w.node === node.id || w.node === node.name);
      parts.push(h('div.node', {},
        h('div.node-head', {},
          h('strong', {}, node.name || shortId(node.id)),
          h('span.mono.muted', {}, node.address || ''),
          h(`span.badge.node-${node.state}`, {}, node.state),
          h('span.muted', {}, `heartbeat ${age(node.heartbeat_at, now)}`)),
        workerTable(mine)));
    }
  }
  fill(panel, parts);
}

function showFailed(el, jobs, pages) {
  if (!jobs.length) {
    fill(el, h('p.muted', {}, 'No failed items in the newest 100 jobs.'));
    return;
  }
  fill(el, h('ul.failures', {}, jobs.flatMap((job, i) => pages[i].results.map((r) => h('li', {},
    link(`/ui/jobs/${job.id}?failed=1&index=${r.index}`,
      h('span.badge.status-failed', {}, r.error?.type || 'error'),
      h('span.mono', {}, ` ${shortId(job.id)}`),
      h('span.muted', {}, ` ${job.function}[${r.index}]`)),
    h('div.failure-message', {}, clip(r.error?.message || '', 200)))))));
}
