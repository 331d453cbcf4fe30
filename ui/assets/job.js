// The job page (`/ui/jobs/{id}`): every field of the job, a live progress bar and a chart of
// its throughput, its results a page at a time (results.js), cancel and delete (confirmed in
// the page), the NDJSON download and the event stream.
//
// Live updates come from the job's event stream with `results=false` (progress only, at most
// ~10 events a second from the server); they are drawn at most RENDERS_PER_S times a second,
// in an animation frame, so a 1,000,000-item job costs the page a few small redraws a second.
// The job itself is read again every few seconds while it runs (its status and start time are
// not in progress events), and from the stream's `end` event when it finishes.

import { del, eventStream, getJson, post, request, token } from './api.js';
import { lineChart } from './chart.js';
import {
  axisNumber, count, duration, fill, h, isFinished, link, progressBar, rate, shortId, speed, statusBadge, time,
} from './dom.js';
import { resultsTable } from './results.js';

const RENDERS_PER_S = 4;
const MAX_POINTS = 600;
const FIELDS = ['id', 'status', 'function', 'kwargs', 'star', 'chunksize', 'timeout_s', 'max_attempts',
  'on_error', 'priority', 'total', 'done', 'failed', 'metadata', 'created_at', 'started_at', 'finished_at', 'error'];

export async function mount(ctx) {
  const id = decodeURIComponent(ctx.params[0]);
  fill(ctx.root, h('p.muted', {}, 'Loading job…'));
  let job;
  try {
    job = await getJson(`/v1/jobs/${encodeURIComponent(id)}`, { signal: ctx.signal });
  } catch (e) {
    if (e.status === 404) {
      fill(ctx.root, h('section.panel', {}, h('h1', {}, 'Job not found'),
        h('p', {}, `${e.describe()}. It may have been deleted, or removed by retention. `,
          link('/ui/jobs', 'Back to the jobs'), '.')));
      ctx.live('idle');
    } else {
      ctx.error(e);
    }
    return;
  }
  // Live work of this page; ended early by a delete, so no request follows the job's removal.
  const live = new AbortController();
  ctx.signal.addEventListener('abort', () => live.abort(), { once: true });

  const bar = progressBar(job, true);
  bar.id = 'job-progress';
  bar.dataset.renders = '0';
  const summary = h('div.progress-summary', { id: 'job-summary' });
  const badge = h('span');
  const actions = h('div.actions');
  const fields = h('dl.fields', { id: 'job-fields' });
  const chartNote = h('span.muted', {});
  const chart = lineChart({
    label: 'Items finished per second over the job’s run',
    xLabel: (x) => duration(x),
    yLabel: axisNumber,
    signal: ctx.signal,
  });
  const results = resultsTable(ctx, job.id, {
    failedOnly: ctx.query.get('failed') === '1',
    index: ctx.query.has('index') ? Number(ctx.query.get('index')) : null,
  });

  fill(ctx.root,
    h('div.page-head', {},
      h('div.title-block', {},
        h('div.crumbs', {}, link('/ui/jobs', 'Jobs'), ' / ', h('span.mono', {}, shortId(job.id))),
        h('h1.page-title', {}, h('span.mono', {}, job.function), ' ', badge)),
      actions),
    h('section.panel', {}, bar, summary),
    h('div.columns.job-body', {},
      h('div.stack', {},
        h('section.panel.details', {}, h('div.panel-head', {}, h('h2', {}, 'Job')), fields),
        h('section.panel', {}, h('div.panel-head', {}, h('h2', {}, 'Streams and downloads')), links(ctx, job))),
      h('div.stack', {},
        h('section.panel', {}, h('div.panel-head', {}, h('h2', {}, 'Throughput'), chartNote), chart.el),
        results.el)));

  const samples = []; // { x: seconds since the job started (or was created), done }
  let origin = null; // fixed at the first sample, so that x never jumps
  let dirty = false; // the results table loads its first page by itself
  let scheduled = false;
  let lastRender = 0;
  let shownStatus = null;

  const render = () => {
    scheduled = false;
    lastRender = performance.now();
    bar.dataset.renders = String(Number(bar.dataset.renders) + 1);
    bar.update(job);
    const { rate: perSecond, eta } = speed(job);
    const finished = isFinished(job);
    fill(summary,
      h('span', {}, h('strong', {}, count(job.done)), ` / ${job.total === null ? '? (uploading)' : count(job.total)} done`),
      h(`span${job.failed ? '.bad' : ''}`, {}, `${count(job.failed)} failed`),
      perSecond === null ? null : h('span', {}, `${rate(perSecond).replace('/s', '')} items/s`),
      finished || eta === null ? null : h('span', {}, `ETA ${duration(eta)}`),
      job.started_at ? h('span.muted', {}, finished
        ? `ran ${duration((Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000)}`
        : `running for ${duration((Date.now() - Date.parse(job.started_at)) / 1000)}`) : h('span.muted', {}, 'not started'));
    if (job.status !== shownStatus) {
      shownStatus = job.status;
      fill(badge, statusBadge(job.status));
      showActions(ctx, job, actions, live, onChange);
    }
    showFields(fields, job);
    drawChart();
    if (!dirty) return;
    dirty = false;
    results.refresh(finished);
  };
  // At most RENDERS_PER_S renders a second, each in an animation frame.
  const schedule = () => {
    dirty = true;
    if (scheduled || live.signal.aborted) return;
    scheduled = true;
    const wait = Math.max(0, 1000 / RENDERS_PER_S - (performance.now() - lastRender));
    setTimeout(() => requestAnimationFrame(render), wait);
  };
  const onChange = (updated) => {
    job = updated;
    schedule();
  };

  function drawChart() {
    const points = [];
    for (let i = 1; i < samples.length; i++) {
      const [a, b] = [samples[i - 1], samples[i]];
      if (b.x > a.x) points.push({ x: b.x, y: Math.max(0, b.done - a.done) / (b.x - a.x) });
    }
    if (points.length === 0 && isFinished(job)) {
      // No live samples: draw the job's average over its run, when it ran long enough to chart.
      const seconds = job.started_at && job.finished_at
        ? (Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000 : 0;
      chart.el.hidden = seconds < 1;
      chartNote.textContent = !job.started_at ? 'it never ran' : seconds < 1
        ? `it ran ${duration(seconds)}, before this page opened: nothing to chart`
        : 'average over its run (it ended before this page opened)';
      if (seconds >= 1) {
        const average = job.done / seconds;
        chart.draw([{ x: 0, y: average }, { x: seconds, y: average }], { xMin: 0, xMax: seconds });
      }
      return;
    }
    chartNote.textContent = points.length ? 'items per second while this page is open' : 'waiting for progress';
    const xMax = samples.length ? samples[samples.length - 1].x : 1;
    chart.draw(points, { xMin: samples.length ? samples[0].x : 0, xMax: Math.max(xMax, (samples[0]?.x ?? 0) + 1) });
  }

  const sample = (done, last = false) => {
    origin ??= Date.parse(job.started_at || job.created_at);
    const x = (Date.now() - origin) / 1000;
    const lastSample = samples[samples.length - 1];
    // Keep samples at least half a second apart so that the rate is not noise; the final one
    // replaces a sample too close before it.
    if (lastSample && x - lastSample.x < 0.5) {
      if (last && samples.length > 1) samples[samples.length - 1] = { x, done };
      return;
    }
    samples.push({ x, done });
    if (samples.length > MAX_POINTS) samples.splice(0, samples.length - MAX_POINTS);
  };

  render();
  if (isFinished(job)) return;
  eventStream(`/v1/jobs/${job.id}/events?results=false`, {
    signal: live.signal,
    onState: (state) => ctx.live(state === 'closed' ? 'idle' : state),
    onEvent: ({ event, data }) => {
      if (event === 'progress') {
        if (job.status === 'queued' && data.done > 0) job.status = 'running';
        job = { ...job, done: data.done, failed: data.failed, total: data.total };
        sample(data.done);
        schedule();
      } else if (event === 'end') {
        job = data;
        sample(data.done, true);
        schedule();
      }
    },
  }).catch((e) => ctx.error(e));
  // Status and start time are not in progress events: read the job now and then while it runs.
  ctx.poll(async (signal) => {
    if (isFinished(job) || live.signal.aborted) return;
    const fresh = await getJson(`/v1/jobs/${job.id}`, { signal });
    if (!isFinished(job)) onChange({ ...fresh, done: Math.max(fresh.done, job.done) });
  }, 3000);
}

function showFields(dl, job) {
  const text = JSON.stringify(job);
  if (dl.shownText === text) return; // unchanged: keep the user's text selection
  dl.shownText = text;
  const keys = [...FIELDS, ...Object.keys(job).filter((k) => !FIELDS.includes(k))];
  fill(dl, keys.filter((k) => k in job).flatMap((key) => {
    const value = job[key];
    let shown;
    if (key.endsWith('_at')) shown = time(value);
    else if (key === 'status') shown = statusBadge(value);
    else if (value === null) shown = h('span.muted', {}, 'null');
    else if (typeof value === 'object') shown = h('code.json', {}, JSON.stringify(value, null, 1));
    else shown = h('span', {}, String(value));
    return [h('dt', {}, key), h('dd', { dataset: { field: key } }, shown)];
  }));
}

function showActions(ctx, job, actions, live, onChange) {
  const buttons = [];
  if (!isFinished(job)) {
    const cancel = h('button.button.danger', { type: 'button', id: 'cancel-job' }, 'Cancel job');
    cancel.addEventListener('click', async () => {
      if (!(await ctx.confirm({
        title: `Cancel job ${shortId(job.id)}?`,
        text: 'Its queued chunks will never run and its running chunks are stopped. Results already recorded stay readable.',
        yes: 'Cancel job',
        no: 'Keep running',
      }))) return;
      cancel.disabled = true;
      try {
        onChange(await post(`/v1/jobs/${job.id}/cancel`, ctx.signal));
      } catch (e) {
        cancel.disabled = false;
        ctx.error(e);
      }
    });
    buttons.push(cancel);
  } else {
    const remove = h('button.button.danger', { type: 'button', id: 'delete-job' }, 'Delete job');
    remove.addEventListener('click', async () => {
      if (!(await ctx.confirm({
        title: `Delete job ${shortId(job.id)}?`,
        text: `The job and its ${count(job.done)} results are removed from poold. This cannot be undone.`,
        yes: 'Delete job',
      }))) return;
      remove.disabled = true;
      live.abort();
      try {
        await del(`/v1/jobs/${job.id}`, ctx.signal);
        ctx.navigate('/ui/jobs', { message: `Deleted job ${job.id} (${job.function}).` });
      } catch (e) {
        remove.disabled = false;
        ctx.error(e);
      }
    });
    buttons.push(remove);
  }
  fill(actions, buttons);
}

/** The NDJSON download (through fetch, so the token is sent) and the event stream. */
function links(ctx, job) {
  const eventsPath = `/v1/jobs/${job.id}/events`;
  const download = h('button.button', { type: 'button', id: 'download-ndjson' }, 'Download results (NDJSON)');
  download.addEventListener('click', async () => {
    download.disabled = true;
    try {
      const response = await request(`/v1/jobs/${job.id}/results`, {
        headers: { Accept: 'application/x-ndjson' }, signal: ctx.signal,
      });
      const url = URL.createObjectURL(await response.blob());
      const a = h('a', { href: url, download: `${job.id}.ndjson` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (e) {
      ctx.error(e);
    } finally {
      download.disabled = false;
    }
  });
  const curl = `curl -N ${token() ? "-H 'Authorization: Bearer $POOLD_API_TOKEN' " : ''}${location.origin}${eventsPath}`;
  return h('div.links', {},
    h('p', {}, download),
    h('p.muted', {}, 'Every result in index order, one JSON object per line (read with your token, saved as a file).'),
    h('p', {}, token()
      ? h('span', {}, 'Event stream (needs the token, so not a plain link): ')
      : h('span', {}, h('a', { href: eventsPath, target: '_blank', rel: 'noopener' }, 'Event stream'), ' (server-sent events) — or from a terminal:')),
    h('pre.command', {}, curl),
    h('p.muted', {}, 'Events: progress, log, result (id = item index) and end; resume with Last-Event-ID.'));
}
