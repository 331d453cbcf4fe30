// DOM building and number/time formatting shared by the views.
//
// Every text that comes from the API (function names, values, error messages, metadata) goes
// into the page as text nodes through `h`, never as HTML, so a job cannot inject markup. No
// inline style attribute is ever written (the CSP forbids them); sizes are set through the
// CSSOM (`el.style.width = ...`), which the policy allows.

/** Create an element: `h('a.link', {href: '/x', onclick: f}, 'text', child, ...)`. */
export function h(tag, attrs, ...children) {
  const [name, ...classes] = tag.split('.');
  const el = document.createElement(name || 'div');
  if (classes.length) el.className = classes.join(' ');
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'text') el.textContent = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** An internal link handled by the router (no page load). */
export function link(href, ...children) {
  return h('a', { href, 'data-link': true }, ...children);
}

const integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat('en-US', { maximumFractionDigits: 1 });

export function count(n) {
  return n === null || n === undefined ? '–' : integer.format(n);
}

/** Items per second: one decimal below 10, whole numbers above. */
export function rate(perSecond) {
  if (perSecond === null || perSecond === undefined || !Number.isFinite(perSecond)) return '–';
  return `${perSecond < 10 ? decimal.format(perSecond) : integer.format(perSecond)}/s`;
}

/** An axis label: up to two decimals for small numbers, thousands separators for big ones. */
export function axisNumber(n) {
  return n >= 10 ? integer.format(n) : String(Math.round(n * 100) / 100);
}

/** A duration in seconds as `850 ms`, `42s`, `3m 05s`, `2h 10m`, `3d 4h`. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '–';
  if (seconds < 1) return `${Math.max(0, Math.round(seconds * 1000))} ms`;
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor(s / 3600) % 24}h`;
}

/** How long ago an RFC 3339 time was, e.g. `5m 02s ago`. */
export function age(iso, now = Date.now()) {
  if (!iso) return '–';
  const seconds = (now - Date.parse(iso)) / 1000;
  return seconds < 1 ? 'just now' : `${duration(seconds)} ago`;
}

/** A local, readable form of an RFC 3339 time (the raw value goes in the title). */
export function time(iso) {
  if (!iso) return h('span.muted', {}, '–');
  const date = new Date(iso);
  return h('time', { datetime: iso, title: iso }, date.toLocaleString());
}

/**
 * The last 8 hex digits of a job id: its random part (a UUIDv7 starts with the time, so jobs
 * made in the same minute share their first digits).
 */
export function shortId(id) {
  return String(id).slice(-8);
}

/** `3 jobs`, `1 job`. */
export function plural(n, word) {
  return `${count(n)} ${word}${n === 1 ? '' : 's'}`;
}

/** Text cut to `max` characters. */
export function clip(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** Compact JSON, cut to `max` characters. */
export function json(value, max = 160) {
  const text = JSON.stringify(value);
  return text === undefined ? 'undefined' : clip(text, max);
}

/** A job's finish fraction in 0..1 (0 while its total is unknown). */
export function fraction(job) {
  if (!job.total) return job.total === 0 ? 1 : 0;
  return Math.min(1, job.done / job.total);
}

/**
 * A job's rate and ETA, computed the way the server's `progress` events do: items done since
 * it started, over the time since it started (or until it finished).
 */
export function speed(job, now = Date.now()) {
  if (!job.started_at) return { rate: null, eta: null };
  const end = job.finished_at ? Date.parse(job.finished_at) : now;
  const seconds = (end - Date.parse(job.started_at)) / 1000;
  const perSecond = seconds > 0 ? job.done / seconds : null;
  const finished = ['completed', 'failed', 'cancelled'].includes(job.status);
  const eta = !finished && perSecond > 0 && job.total !== null
    ? Math.max(0, job.total - job.done) / perSecond : null;
  return { rate: perSecond, eta: finished ? 0 : eta };
}

export function isFinished(job) {
  return ['completed', 'failed', 'cancelled'].includes(job.status);
}

export function statusBadge(status) {
  return h(`span.badge.status-${status}`, { 'data-status': status }, status);
}

/**
 * A progress bar: done items (ok part and failed part) out of the total. `update` changes it
 * in place so a live view does not rebuild it.
 */
export function progressBar(job, big = false) {
  const ok = h('span.bar-ok');
  const bad = h('span.bar-failed');
  const label = h('span.bar-label');
  const bar = h(`div.bar${big ? '.big' : ''}`, {
    role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100,
  }, ok, bad, label);
  bar.update = (j) => {
    const f = fraction(j);
    const percent = Math.floor(f * 1000) / 10;
    const failedShare = j.total ? Math.min(f, j.failed / j.total) : 0;
    ok.style.width = `${(f - failedShare) * 100}%`;
    bad.style.width = `${failedShare * 100}%`;
    bar.setAttribute('aria-valuenow', String(percent));
    bar.setAttribute('aria-valuetext', j.total === null
      ? `${count(j.done)} done, total not known yet` : `${percent}%`);
    label.textContent = j.total === null ? `${count(j.done)} / ?` : `${percent}%`;
  };
  bar.update(job);
  return bar;
}
