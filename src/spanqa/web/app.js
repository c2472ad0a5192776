// spanqa web page: ask POST /v1/answer (with return_probabilities), then show the answer, the n-best list,
// the answer highlighted in the context, and an SVG bar chart of P_begin and P_end for every context token.
// In collection mode it asks POST /v1/ask instead, and shows each answer's source, its passage with the answer
// highlighted, and that passage's chart.
// Plain DOM, no build step, no network beyond this server. Text goes in with textContent, never as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
let last = null; // {mode, context, data}: the latest answer, redrawn when a span is picked or the scale changes

const collectionMode = () => document.querySelector("input[name=mode]:checked").value === "collection";

function setMode() {
  const collection = collectionMode();
  $("context").hidden = $("context-label").hidden = collection;
  $("context").required = !collection;
  $("passages-box").hidden = !collection;
}

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function ask(event) {
  event.preventDefault();
  showError("");
  const question = $("question").value;
  const context = $("context").value;
  const mode = collectionMode() ? "collection" : "context";
  const topK = Math.max(1, Math.min(20, parseInt($("topk").value, 10) || 1));
  const passages = Math.max(1, Math.min(50, parseInt($("passages").value, 10) || 10));
  const body = mode === "collection"
    ? { question, passages, top_k: topK, return_probabilities: true }
    : { question, context, top_k: topK, return_probabilities: true };
  const headers = { "Content-Type": "application/json" };
  if ($("apikey").value) headers["X-API-Key"] = $("apikey").value;
  $("submit").disabled = true;
  $("busy").hidden = false;
  try {
    const resp = await fetch(mode === "collection" ? "/v1/ask" : "/v1/answer", {
      method: "POST",
      headers,
      body: JSON.stringify(body),
    });
    const data = await resp.json().catch(() => null);
    if (!resp.ok) {
      const msg = data && data.error ? data.error.message : `HTTP ${resp.status}`;
      showError(`The server refused the request: ${msg}`);
      return;
    }
    last = { mode, context, data };
    render(0);
  } catch (err) {
    showError(`Could not reach the server: ${err}`);
  } finally {
    $("submit").disabled = false;
    $("busy").hidden = true;
  }
}

// What to show for candidate `a`: the text it sits in (the context, or its passage), its span there, its chart.
function view(a) {
  if (last.mode !== "collection") return { context: last.context, span: a, probs: last.data.probabilities };
  if (!a) return { context: "", span: null, probs: null };
  const p = a.passage;
  return { context: p.text, span: { start: a.start - p.start, end: a.end - p.start }, probs: a.probabilities };
}

function sourceLine(a) {
  const page = a.page ? `, page ${a.page}` : "";
  const also = a.also_in.length ? `; also in ${a.also_in.length} other place(s)` : "";
  const doc = a.document === a.source ? a.source : `${a.document} (${a.source})`;
  return `from ${doc}${page}, characters [${a.start}, ${a.end})${also}`;
}

// Show the answer list with candidate `pick` selected (0 = the reader's answer).
function render(pick) {
  const { mode, data } = last;
  const answers = data.answers;
  const best = answers[0];
  const none = data.no_answer || !best;
  $("result").hidden = false;
  $("answer").textContent = none ? "(no answer)" : best.text;
  $("score").textContent = none ? "" : `score ${best.score.toFixed(3)}  [${best.start}, ${best.end})`;
  $("no-answer").hidden = !none;
  $("no-answer").textContent = mode === "collection"
    ? "no answer: the reader finds none in the passages it read" : "no answer: the reader finds none in this context";

  const shown = answers[pick];
  const { context, span, probs } = view(shown);
  $("source").hidden = mode !== "collection" || !shown;
  $("source").textContent = shown && mode === "collection" ? sourceLine(shown) : "";
  $("where-heading").textContent = mode === "collection" ? "In its passage" : "In the context";
  const hl = $("highlighted");
  hl.replaceChildren();
  if (span) {
    hl.append(context.slice(0, span.start));
    const mark = document.createElement("mark");
    mark.textContent = context.slice(span.start, span.end);
    hl.append(mark, context.slice(span.end));
  } else {
    hl.append(context);
  }

  const list = $("nbest");
  list.replaceChildren();
  answers.forEach((a, i) => {
    const li = document.createElement("li");
    li.textContent = a.text;
    const s = document.createElement("span");
    s.className = "s";
    s.textContent = a.score.toFixed(4) + (mode === "collection" ? `  ${a.document}` : "");
    li.append(s);
    if (i === pick) li.className = "selected";
    li.addEventListener("click", () => render(i));
    list.append(li);
  });

  drawChart(probs, span);
}

// Bars of P_begin (blue) and P_end (orange) per context token, tokens on the x axis, the shown span shaded.
function drawChart(probs, span) {
  const wrap = $("chart-wrap");
  wrap.replaceChildren();
  if (!probs) return;
  const tokens = probs.tokens;
  const log = $("logscale").checked;
  const step = 22, left = 46, top = 10, plotH = 220, bottom = 90;
  const width = left + Math.max(tokens.length, 1) * step + 10;
  const height = top + plotH + bottom;
  const floor = -6; // log scale: 1e-6 .. 1
  const y = (p) => {
    const f = log ? (Math.log10(Math.max(p, 1e-6)) - floor) / -floor : p;
    return top + plotH * (1 - f);
  };
  const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "P_begin and P_end for every context token" });

  const ticks = log ? [1e-6, 1e-4, 1e-2, 1] : [0, 0.25, 0.5, 0.75, 1];
  for (const t of ticks) {
    svg.append(el("line", { x1: left, x2: width - 5, y1: y(t), y2: y(t), class: "grid" }));
    svg.append(el("text", { x: left - 6, y: y(t) + 4, "text-anchor": "end" }, log ? `1e${Math.log10(t)}` : t));
  }
  if (span) {
    const inside = tokens.map((t, k) => (t.start < span.end && t.end > span.start ? k : -1)).filter((k) => k >= 0);
    if (inside.length) {
      const x0 = left + inside[0] * step, x1 = left + (inside[inside.length - 1] + 1) * step;
      svg.append(el("rect", { x: x0, y: top, width: x1 - x0, height: plotH, fill: "#ffe08a", opacity: 0.6,
        "data-role": "span" }));
    }
  }
  tokens.forEach((t, k) => {
    const x = left + k * step;
    const tip = `${JSON.stringify(t.text)} [${t.start}, ${t.end})  P_begin ${t.p_begin.toExponential(2)}` +
      `  P_end ${t.p_end.toExponential(2)}  window ${t.window}`;
    for (const [p, dx, color, role] of [[t.p_begin, 3, "#1f77b4", "begin"], [t.p_end, 11, "#ff7f0e", "end"]]) {
      const bar = el("rect", { x: x + dx, y: y(p), width: 8, height: Math.max(0, top + plotH - y(p)), fill: color,
        "data-role": role });
      bar.append(el("title", {}, tip));
      svg.append(bar);
    }
    const lx = x + step / 2, ly = top + plotH + 8;
    const label = el("text", { x: lx, y: ly, "text-anchor": "end", transform: `rotate(-60 ${lx} ${ly})` },
      t.text.length > 14 ? t.text.slice(0, 13) + "…" : t.text);
    label.append(el("title", {}, tip));
    svg.append(label);
  });
  svg.append(el("line", { x1: left, x2: left, y1: top, y2: top + plotH, class: "axis" }));
  svg.append(el("line", { x1: left, x2: width - 5, y1: top + plotH, y2: top + plotH, class: "axis" }));
  wrap.append(svg);
  $("windows").textContent = probs.windows > 1
    ? `(${probs.windows} windows: each token shows its max-context window)` : "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("ask").addEventListener("submit", ask);
  document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", setMode));
  setMode();
  $("context").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("ask").requestSubmit();
  });
  $("logscale").addEventListener("change", () => {
    if (last) render(Math.max(0, [...$("nbest").children].findIndex((li) => li.className === "selected")));
  });
});
