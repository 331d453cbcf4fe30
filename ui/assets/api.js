// The dashboard's only way to the server: the public /v1 API, as any client sees it.
//
// `request` sends the bearer token (kept in sessionStorage, for this tab only) and turns every
// answer that is not 2xx into an ApiError carrying the problem document's `code` and `detail`,
// so views can show a sentence instead of a blank page. A 401 also tells the app (through
// `onUnauthorized`) to ask for a token. `eventStream` reads server-sent events with fetch()
// (EventSource cannot send an Authorization header) and reconnects by itself after a drop,
// sending `Last-Event-ID` so that no event is lost or repeated.

const TOKEN_KEY = 'poold.token';

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }

  /** One sentence for the page, e.g. `404 job_not_found: no job with id …`. */
  describe() {
    if (this.status === 0) return `poold is not reachable (${this.detail}); retrying`;
    return `${this.status} ${this.code}: ${this.detail}`;
  }
}

let unauthorized = () => {};

/** Called with the ApiError of every 401. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** fetch() a same-origin path with the token; resolves to the Response when it is 2xx. */
export async function request(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const bearer = token();
  if (bearer) headers.set('Authorization', `Bearer ${bearer}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers, cache: 'no-store' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'unreachable', e.message || 'network error');
  }
  if (response.ok) return response;
  let problem = {};
  try {
    problem = await response.json();
  } catch {
    // not a problem document (a proxy's error page): fall back to the status line
  }
  const error = new ApiError(
    response.status,
    problem.code || 'http_error',
    problem.detail || response.statusText || 'request failed',
  );
  if (response.status === 401) unauthorized(error);
  throw error;
}

/** GET (or another method) a JSON document; null for 204. */
export async function getJson(path, options = {}) {
  const response = await request(path, {
    ...options,
    headers: { Accept: 'application/json', ...(options.headers || {}) },
  });
  return response.status === 204 ? null : response.json();
}

export function post(path, signal) {
  return getJson(path, { method: 'POST', signal });
}

export function del(path, signal) {
  return getJson(path, { method: 'DELETE', signal });
}

/** Resolve after `ms`, or reject at once when `signal` aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new DOMException('aborted', 'AbortError'));
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(timer);
      reject(new DOMException('aborted', 'AbortError'));
    }, { once: true });
  });
}

/**
 * Follow a server-sent event stream until its `end` event, `signal` aborts, or the server
 * answers a 4xx. `onEvent({event, id, data})` gets each event (data parsed as JSON);
 * `onState(state, error)` hears `live`, `reconnecting` (with the error) and `closed`.
 * After a drop it waits (0.5 s, doubling to 10 s) and reconnects with `Last-Event-ID` set to
 * the last id it saw.
 */
export async function eventStream(path, { onEvent, onState = () => {}, signal }) {
  let lastId = null;
  let delay = 500;
  while (!signal.aborted) {
    let error = null;
    try {
      const headers = { Accept: 'text/event-stream' };
      if (lastId !== null) headers['Last-Event-ID'] = lastId;
      const response = await request(path, { headers, signal });
      onState('live');
      delay = 500;
      for await (const event of parseEvents(response.body, signal)) {
        if (event.id !== null) lastId = event.id;
        onEvent(event);
        if (event.event === 'end') {
          onState('closed');
          return;
        }
      }
    } catch (e) {
      if (signal.aborted || e.name === 'AbortError') return;
      if (e instanceof ApiError && e.status >= 400 && e.status < 500) {
        onState('closed', e);
        throw e;
      }
      error = e;
    }
    onState('reconnecting', error);
    try {
      await sleep(delay, signal);
    } catch {
      return;
    }
    delay = Math.min(delay * 2, 10_000);
  }
}

/** Parse a `text/event-stream` body into `{event, id, data}` objects. */
async function* parseEvents(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const stop = () => reader.cancel().catch(() => {});
  signal.addEventListener('abort', stop, { once: true });
  let buffer = '';
  let event = { event: 'message', id: null, data: [] };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === '') {
          if (event.data.length) {
            let data = event.data.join('\n');
            try {
              data = JSON.parse(data);
            } catch {
              // not JSON: hand over the text
            }
            yield { event: event.event, id: event.id, data };
          }
          event = { event: 'message', id: null, data: [] };
          continue;
        }
        if (line.startsWith(':')) continue; // keep-alive comment
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') event.event = text;
        else if (field === 'id') event.id = text;
        else if (field === 'data') event.data.push(text);
      }
    }
  } finally {
    signal.removeEventListener('abort', stop);
  }
}
