// A small line chart on <canvas> (no library): an area under a line, a zero-based y axis with
// round gridlines, and x labels. Colours come from the page's CSS variables at each draw, so
// the chart follows the light/dark setting. It redraws itself when its box changes size.

/**
 * `chart = lineChart({label, xLabel, yLabel, signal})`; put `chart.el` in the page and call
 * `chart.draw(points, {xMin, xMax})` with points `{x, y}` (x in seconds; `y: null` breaks
 * the line). `xLabel(x)` and `yLabel(y)` format the axis labels. It stops following size and
 * colour-scheme changes when `signal` aborts.
 */
export function lineChart({ label, xLabel, yLabel, signal }) {
  const canvas = document.createElement('canvas');
  canvas.setAttribute('role', 'img');
  canvas.setAttribute('aria-label', label);
  const el = document.createElement('div');
  el.className = 'chart';
  el.append(canvas);
  let last = { points: [], xMin: 0, xMax: 1 };

  const draw = (points = last.points, range = last) => {
    last = { points, xMin: range.xMin, xMax: range.xMax };
    const width = el.clientWidth;
    const height = el.clientHeight;
    if (!width || !height) return;
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    paint(ctx, width, height, last, xLabel, yLabel);
  };
  const resized = new ResizeObserver(() => draw());
  resized.observe(el);
  const scheme = matchMedia('(prefers-color-scheme: dark)');
  const recolour = () => draw();
  scheme.addEventListener('change', recolour);
  signal.addEventListener('abort', () => {
    resized.disconnect();
    scheme.removeEventListener('change', recolour);
  }, { once: true });
  return { el, canvas, draw };
}

function paint(ctx, width, height, { points, xMin, xMax }, xLabel, yLabel) {
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const font = `12px ${css.getPropertyValue('--font').trim() || 'sans-serif'}`;
  const ys = points.map((p) => p.y).filter((y) => y !== null && Number.isFinite(y));
  const { top, lines } = niceScale(Math.max(1, ...ys));
  ctx.font = font;
  const values = Array.from({ length: lines + 1 }, (_, i) => (top * i) / lines);
  const labelWidth = Math.max(...values.map((v) => ctx.measureText(yLabel(v)).width));
  const left = Math.ceil(labelWidth) + 10;
  const right = 8;
  const plotTop = 8;
  const bottom = 22;
  const plotW = Math.max(1, width - left - right);
  const plotH = Math.max(1, height - plotTop - bottom);
  const span = Math.max(1e-9, xMax - xMin);
  const px = (x) => left + ((x - xMin) / span) * plotW;
  const py = (y) => plotTop + plotH - (y / top) * plotH;

  // Grid and y labels.
  ctx.strokeStyle = color('--border');
  ctx.fillStyle = color('--muted');
  ctx.lineWidth = 1;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (const value of values) {
    const y = Math.round(py(value)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(left, y);
    ctx.lineTo(left + plotW, y);
    ctx.stroke();
    ctx.fillText(yLabel(value), left - 6, y);
  }
  // X labels: both ends and the middle.
  ctx.textBaseline = 'top';
  [[xMin, 'left'], [(xMin + xMax) / 2, 'center'], [xMax, 'right']].forEach(([x, align]) => {
    ctx.textAlign = align;
    ctx.fillText(xLabel(x), px(x), plotTop + plotH + 6);
  });

  // The series: runs of consecutive points with a value.
  const runs = [];
  let run = [];
  for (const p of points) {
    if (p.y === null || !Number.isFinite(p.y) || p.x < xMin) {
      if (run.length) runs.push(run);
      run = [];
    } else {
      run.push(p);
    }
  }
  if (run.length) runs.push(run);
  const accent = color('--accent');
  for (const r of runs) {
    if (r.length === 1) { // a lone sample: a dot, since a line needs two
      ctx.beginPath();
      ctx.arc(px(r[0].x), py(r[0].y), 2.5, 0, 2 * Math.PI);
      ctx.fillStyle = accent;
      ctx.fill();
      continue;
    }
    ctx.beginPath();
    ctx.moveTo(px(r[0].x), py(0));
    r.forEach((p) => ctx.lineTo(px(p.x), py(p.y)));
    ctx.lineTo(px(r[r.length - 1].x), py(0));
    ctx.closePath();
    ctx.fillStyle = color('--accent-soft');
    ctx.fill();
    ctx.beginPath();
    r.forEach((p, i) => (i ? ctx.lineTo(px(p.x), py(p.y)) : ctx.moveTo(px(p.x), py(p.y))));
    ctx.strokeStyle = accent;
    ctx.lineWidth = 2;
    ctx.lineJoin = 'round';
    ctx.stroke();
  }
}

/**
 * The axis top: the smallest of 1, 2, 2.5, 5 × 10^k at or above `value`, cut in a number of
 * gridlines that gives round labels (2 → 4 steps of 0.5; 5 → 5 steps of 1; …).
 */
function niceScale(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  for (const [step, lines] of [[1, 5], [2, 4], [2.5, 5], [5, 5], [10, 5]]) {
    if (step * power >= value) return { top: step * power, lines };
  }
  return { top: 10 * power, lines: 5 };
}
