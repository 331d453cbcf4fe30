// The dashboard's entry point: routing between the views, the token prompt, the confirm
// dialog, the page notice and the "live" indicator.
//
// Each view is `mount(ctx)` in its own module (overview.js, jobs.js, job.js). A view gets a
// fresh `ctx` with an AbortSignal that ends its requests, streams and timers when the user
// leaves it; it never needs to clean up by hand. When the API answers 401 the app stops the
// view, asks for the token, and mounts the view again with it.

import { onUnauthorized, setToken, token } from './api.js';
import { fill, h, link } from './dom.js';
import * as overview from './overview.js';
import * as jobs from './jobs.js';
import * as job from './job.js';

const main = document.getElementById('main');
const liveEl = document.getElementById('live');
const forgetButton = document.getElementById('forget-token');

const ROUTES = [
  { pattern: /^\/(?:ui\/?)?$/, nav: 'overview', view: overview },
  { pattern: /^\/ui\/jobs\/?$/, nav: 'jobs', view: jobs },
  { pattern: /^\/ui\/jobs\/([^/]+)\/?$/, nav: 'jobs', view: job },
];

let current = null; // { controller }
let flash = null;

function navigate(path, { replace = false, message = null } = {}) {
  flash = message;
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  render();
}

function render() {
  current?.controller.abort();
  const controller = new AbortController();
  current = { controller };
  const path = location.pathname;
  const route = ROUTES.find((r) => r.pattern.test(path));
  document.querySelectorAll('[data-nav]').forEach((a) => {
    a.classList.toggle('active', route?.nav === a.dataset.nav);
  });
  forgetButton.hidden = !token();
  setLive('idle');
  const root = h('div.view');
  const notice = h('div.notices', { 'aria-live': 'polite' });
  fill(main, notice, root);
  if (flash) notice.append(h('p.notice.info', {}, flash));
  flash = null;
  if (!route) {
    root.append(h('section.panel', {},
      h('h1', {}, 'Page not found'),
      h('p', {}, 'No dashboard page lives at ', h('code', {}, path), '. ', link('/', 'Go to the overview'), '.')));
    return;
  }
  const ctx = makeContext(root, notice, controller.signal, path.match(route.pattern).slice(1));
  // A view's mount may be async (the job page loads the job first): its failure shows too.
  try {
    Promise.resolve(route.view.mount(ctx)).catch((e) => ctx.error(e));
  } catch (e) {
    ctx.error(e);
  }
}

function makeContext(root, notice, signal, params) {
  let errorEl = null;
  const ctx = {
    root,
    signal,
    params,
    query: new URLSearchParams(location.search),
    navigate,
    confirm,
    live: setLive,
    /** Show an API or script error above the view (replacing the previous one). */
    error(e) {
      if (signal.aborted || e?.name === 'AbortError') return;
      if (e?.status === 401) return; // the token prompt says it
      const text = typeof e?.describe === 'function' ? e.describe() : `Error: ${e?.message || e}`;
      if (!errorEl) {
        errorEl = h('p.notice.error', { role: 'alert' });
        notice.append(errorEl);
      }
      errorEl.textContent = text;
      setLive(e?.status === 0 ? 'reconnecting' : 'error');
    },
    clearError() {
      errorEl?.remove();
      errorEl = null;
    },
    /** Run `task(signal)` now and then every `ms` while the view is shown (not while hidden). */
    poll(task, ms) {
      const run = async () => {
        while (!signal.aborted) {
          if (!document.hidden) {
            try {
              await task(signal);
              ctx.clearError();
              setLive('live');
            } catch (e) {
              ctx.error(e);
            }
          }
          await new Promise((resolve) => {
            const timer = setTimeout(resolve, ms);
            signal.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
          });
        }
      };
      run();
    },
  };
  return ctx;
}

function setLive(state) {
  liveEl.dataset.state = state;
  liveEl.querySelector('.live-text').textContent = state;
}

// --- The token prompt -----------------------------------------------------------------

const tokenDialog = document.getElementById('token-dialog');
const tokenInput = document.getElementById('token-input');
const tokenError = document.getElementById('token-error');

onUnauthorized((error) => {
  if (tokenDialog.open) return;
  const refused = token() !== null;
  setToken(null);
  current?.controller.abort();
  setLive('error');
  fill(main, h('section.panel.waiting', {},
    h('h1', {}, 'API token needed'),
    h('p', {}, 'This poold answers 401 to requests without the right bearer token. Enter it to see the dashboard.')));
  tokenError.hidden = !refused;
  tokenError.textContent = refused
    ? `The token was refused: ${error.status} ${error.code}: ${error.detail}` : '';
  tokenInput.value = '';
  tokenDialog.showModal();
  tokenInput.focus();
});

document.getElementById('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const value = tokenInput.value.trim();
  if (!value) return;
  setToken(value);
  tokenDialog.close();
  render();
});

// Escape would close the dialog and leave an empty page: keep it until a token is given.
tokenDialog.addEventListener('cancel', (event) => event.preventDefault());

forgetButton.addEventListener('click', () => {
  setToken(null);
  render();
});

// --- The confirm dialog ---------------------------------------------------------------

const confirmDialog = document.getElementById('confirm-dialog');

/** Ask in the page (not window.confirm); resolves to true when the user confirms. */
function confirm({ title, text, yes = 'Confirm', no = 'Keep' }) {
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-yes').textContent = yes;
  document.getElementById('confirm-no').textContent = no;
  return new Promise((resolve) => {
    const form = document.getElementById('confirm-form');
    const noButton = document.getElementById('confirm-no');
    const done = (answer) => {
      form.removeEventListener('submit', onYes);
      noButton.removeEventListener('click', onNo);
      confirmDialog.removeEventListener('close', onNo);
      if (confirmDialog.open) confirmDialog.close();
      resolve(answer);
    };
    const onYes = (event) => { event.preventDefault(); done(true); };
    const onNo = () => done(false);
    form.addEventListener('submit', onYes);
    noButton.addEventListener('click', onNo);
    confirmDialog.addEventListener('close', onNo);
    confirmDialog.showModal();
    noButton.focus();
  });
}

// --- Links and history ----------------------------------------------------------------

document.addEventListener('click', (event) => {
  const a = event.target.closest('a[data-link]');
  if (!a || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  const url = new URL(a.href);
  if (url.pathname + url.search !== location.pathname + location.search) navigate(url.pathname + url.search);
});

window.addEventListener('popstate', render);
render();
