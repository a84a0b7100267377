// selfagent web page: live desktop (noVNC over the gateway's /ws/vnc) and chat.
// The gateway's cookie authenticates every request and socket made from here.
import RFB from '/novnc/core/rfb.js';

const $ = (sel) => document.querySelector(sel);
const wsBase = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`;

const state = {
  sessionId: null,
  status: 'idle',
  takeover: false, // the desktop shown is taken over (the agent waits)
  inControl: false, // ...and this page's connection is the one driving it
  viewerId: null,
  rfb: null,
  events: null,
  seen: new Set(),
  // The events stream's sequence of the last history event read for the
  // session shown: a reconnect (a gateway restart) reads only what came after.
  lastSeq: 0,
  steps: new Map(),
  thoughts: new Set(),
  answers: new Set(),
  pendingPrompt: null,
  idPattern: null,
  sessions: [],
  desktops: 'fixed',
  desktopGen: 0,
  emptyTemplate: null,
};
window.selfagent = state; // for debugging from the console and for tests

// --- helpers -----------------------------------------------------------------

function newId() {
  // getRandomValues works on plain-http LAN addresses, where randomUUID does not.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function clip(text, max) {
  const s = String(text ?? '').replace(/\s+/g, ' ').trim();
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

function ago(iso) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return '';
  const s = Math.max(0, (Date.now() - t) / 1000);
  if (s < 45) return 'just now';
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(t).toLocaleDateString();
}

function fmtTokens(n) {
  return n >= 10000 ? `${(n / 1000).toFixed(1)}k` : String(n);
}

// A model call's usage as shown on a step and on a task's result.
function usageText(prompt, completion) {
  if (!prompt && !completion) return '';
  return `${fmtTokens(prompt + completion)} tokens (${fmtTokens(prompt)} in, ${fmtTokens(completion)} out)`;
}

function fmtMs(ms) {
  if (ms == null) return '';
  return ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}

async function api(path, body, method) {
  const res = await fetch(path, {
    method: method || (body === undefined ? 'GET' : 'POST'),
    headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
  });
  let data = null;
  try { data = await res.json(); } catch { /* not JSON: reported below by status */ }
  if (res.status === 401) { location.reload(); }
  if (!res.ok) {
    const msg = data?.message || (typeof data?.detail === 'string' ? data.detail : null) || `HTTP ${res.status}`;
    throw new Error(msg);
  }
  return data;
}

// --- action summaries --------------------------------------------------------

function where(a) {
  if (a.target) return `“${clip(a.target, 70)}”`;
  if (a.x != null && a.y != null) return `(${a.x}, ${a.y})`;
  return '';
}

export function summarize(a) {
  if (!a) return '';
  switch (a.action) {
    case 'click': {
      const kind = a.clicks === 2 ? 'Double-click' : a.clicks === 3 ? 'Triple-click'
        : a.button === 'right' ? 'Right-click' : a.button === 'middle' ? 'Middle-click' : 'Click';
      const mods = a.modifiers?.length ? ` with ${a.modifiers.join('+')}` : '';
      return `${kind} ${where(a)}${mods}`;
    }
    case 'move': return `Move the pointer to ${where(a)}`;
    case 'scroll': return `Scroll ${a.direction} ×${a.amount}${where(a) ? ` at ${where(a)}` : ''}`;
    case 'drag': {
      const p = a.path || [];
      return p.length ? `Drag (${p[0].x}, ${p[0].y}) → (${p[p.length - 1].x}, ${p[p.length - 1].y})` : 'Drag';
    }
    case 'type': return `Type “${clip(a.text, 60)}”`;
    case 'key': return `Press ${a.keys}`;
    case 'hold_key': return `Hold ${a.keys} for ${a.duration} s`;
    case 'wait': return `Wait ${a.seconds} s`;
    case 'screenshot': return 'Take a screenshot';
    case 'cursor_position': return 'Read the pointer position';
    case 'shell': return `Run $ ${clip(a.command, 80)}`;
    case 'open_url': return `Open ${clip(a.url, 80)}`;
    case 'launch_app': return `Launch ${a.app}`;
    case 'done': return 'Finish';
    case 'fail': return `Give up: ${clip(a.reason, 80)}`;
    default: return a.action || 'Action';
  }
}

// --- status and controls -----------------------------------------------------

const STATUS_TEXT = {
  idle: 'Idle', waiting: 'Waiting for a desktop', running: 'Running', interrupted: 'Interrupted', paused: 'Paused', takeover: 'You have control',
  needs_user: 'Needs you', succeeded: 'Done', failed: 'Failed', stopped: 'Stopped',
};

const PROMPT_HINT = 'Tell the agent what to do…  (Enter to send, Shift+Enter for a new line)';
const ANSWER_HINT = 'Answer the agent’s question…  (Enter to send)';

function setStatus(status) {
  state.status = status;
  const badge = $('#status-badge');
  badge.dataset.status = status;
  badge.textContent = STATUS_TEXT[status] || status;
  // While the task waits for the person, the chat box answers its question.
  $('#prompt').placeholder = status === 'needs_user' ? ANSWER_HINT : PROMPT_HINT;
  refreshControls();
}

function refreshControls() {
  const active = ['waiting', 'running', 'paused', 'takeover', 'needs_user'].includes(state.status);
  const buttons = Object.fromEntries(
    [...document.querySelectorAll('.controls button')].map((b) => [b.dataset.command, b]));
  buttons.pause.disabled = state.status !== 'running';
  buttons.resume.disabled = state.status !== 'paused';
  buttons.stop.disabled = !active;
  // Taking over from another page hands the input to this one.
  buttons.takeover.disabled = state.inControl;
  buttons.release.disabled = !state.takeover;
}

function setTakeover(takenOver, inControl) {
  state.takeover = takenOver;
  state.inControl = takenOver && inControl;
  const on = state.inControl;
  const badge = $('#mode-badge');
  badge.dataset.mode = on ? 'control' : 'view';
  badge.dataset.elsewhere = String(takenOver && !on);
  badge.textContent = on ? 'You are in control' : takenOver ? 'View only · in control elsewhere' : 'View only';
  $('.desktop-pane').classList.toggle('in-control', on);
  if (state.rfb) {
    // The gateway drops input from any other connection anyway; this keeps
    // noVNC from sending it.
    state.rfb.viewOnly = !on;
    if (on) state.rfb.focus();
  }
  refreshControls();
}

async function sendControl(command) {
  try {
    // A take-over names this page's VNC connection: only its input goes through.
    const body = command === 'takeover' ? { command, viewer: state.viewerId } : { command };
    const res = await api(`/api/sessions/${state.sessionId}/control`, body);
    const changesHolder = command === 'takeover' || command === 'release';
    setTakeover(res.takeover, changesHolder ? res.in_control : state.inControl);
  } catch (err) {
    addError(`Could not ${command}: ${err.message}`);
  }
}

// --- timeline ------------------------------------------------------------------

function timeline() { return $('#timeline'); }

function append(node) {
  const list = timeline();
  list.querySelector('.empty')?.remove();
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  list.appendChild(node);
  if (atBottom) list.scrollTop = list.scrollHeight;
  return node;
}

function addError(text) {
  append(el('li', 'bubble error', text)).dataset.testid = 'error';
}

function addUser(prompt, taskId) {
  const node = el('li', 'bubble user', prompt);
  node.dataset.testid = 'user-message';
  if (taskId) node.dataset.task = taskId;
  return append(node);
}

function stepNode(ev) {
  const key = `${ev.task_id}:${ev.step}`;
  let node = state.steps.get(key);
  if (!node) {
    node = el('li', 'step');
    node.dataset.testid = 'step';
    node.dataset.state = 'running';
    node.append(el('div', 'step-no', String(ev.step)), el('div', 'step-action'), el('div', 'step-state', 'running'));
    state.steps.set(key, node);
    append(node);
  }
  return node;
}

function detail(node, text, cls = '') {
  const line = el('div', `step-detail ${cls}`.trim(), text);
  node.appendChild(line);
  return line;
}

const render = {
  'task.started'(ev) {
    setStatus('running');
    const mine = [...timeline().querySelectorAll('.bubble.user')]
      .find((b) => b.dataset.task === ev.task_id || (!b.dataset.task && b.textContent === ev.prompt));
    if (mine) { mine.dataset.task = ev.task_id; return; }
    addUser(ev.prompt, ev.task_id);
  },
  'step.planned'(ev) {
    const node = stepNode(ev);
    node.querySelector('.step-action').textContent = summarize(ev.action);
    if (ev.thought) {
      const thought = el('div', 'step-thought', clip(ev.thought, 300));
      node.querySelector('.step-state').after(thought);
      state.thoughts.add(`${ev.task_id}|${ev.thought}`);
    }
    const usage = usageText(ev.prompt_tokens || 0, ev.completion_tokens || 0);
    if (usage) {
      const line = detail(node, `Model ${fmtMs(ev.model_ms)} · ${usage}`, 'usage');
      line.dataset.testid = 'step-usage';
    }
    // done and fail end the task without a step.executed: they are complete
    // as soon as they are planned, not "running" forever.
    if (ev.action?.action === 'done' || ev.action?.action === 'fail') {
      const ok = ev.action.action === 'done';
      node.dataset.state = ok ? 'ok' : 'error';
      node.querySelector('.step-state').textContent = ok ? '✓' : '✗';
    }
  },
  'step.grounded'(ev) {
    detail(stepNode(ev), `Located at (${ev.x}, ${ev.y}) · ${ev.method}`);
  },
  'step.executed'(ev) {
    const node = stepNode(ev);
    if (!node.querySelector('.step-action').textContent) {
      node.querySelector('.step-action').textContent = summarize(ev.action);
    }
    node.dataset.state = ev.ok ? 'ok' : 'error';
    node.querySelector('.step-state').textContent = `${ev.ok ? '✓' : '✗'} ${fmtMs(ev.duration_ms)}`.trim();
    if (!ev.ok && ev.error) detail(node, ev.error.message, 'err');
    if (ev.output) {
      const pre = el('pre', 'step-output', ev.output);
      node.appendChild(pre);
    }
  },
  message(ev) {
    // The person's answer to a question: shown as they sent it (once).
    if (ev.role === 'user') {
      if (state.answers.delete(ev.text)) return;
      addUser(ev.text).dataset.answer = 'true';
      return;
    }
    // The planner repeats each step's thought as a message for clients that
    // read only messages; here the step card already shows it.
    if (ev.role !== 'system' && state.thoughts.has(`${ev.task_id}|${ev.text}`)) return;
    const node = el('li', `bubble ${ev.role === 'system' ? 'system' : 'agent'}`, ev.text);
    node.dataset.testid = 'agent-message';
    append(node);
  },
  'task.state'(ev) {
    setStatus(ev.state);
    const label = { takeover: 'taken over', needs_user: 'needs you' }[ev.state] || ev.state;
    append(el('li', 'state-line', label));
    if (ev.state === 'needs_user') {
      const node = el('li', 'bubble agent question', ev.question || 'The agent needs your help.');
      node.dataset.testid = 'question';
      append(node);
      $('#prompt').focus();
    }
  },
  'approval.requested'(ev) {
    // The actuator holds this action until someone here (or over REST/NATS) answers.
    const node = el('li', 'approval');
    node.dataset.testid = 'approval';
    node.dataset.approvalId = ev.approval_id;
    node.dataset.state = 'pending';
    const where = ev.point ? ` at (${ev.point[0]}, ${ev.point[1]})` : '';
    node.append(
      el('div', 'approval-head', `Approve? ${summarize(ev.action)}${where}`),
      el('div', 'approval-rule', `Rule: ${ev.rule} · expires ${new Date(ev.expires_at).toLocaleTimeString()}`),
    );
    const note = el('input', 'approval-note');
    note.placeholder = 'Optional note for the agent';
    note.maxLength = 2000;
    note.dataset.testid = 'approval-note';
    const buttons = el('div', 'approval-buttons');
    for (const [command, label, cls] of [['approve', 'Approve', 'primary'], ['deny', 'Deny', 'danger']]) {
      const button = el('button', cls, label);
      button.type = 'button';
      button.dataset.testid = command;
      button.addEventListener('click', () => decide(node, command, note.value.trim()));
      buttons.appendChild(button);
    }
    node.append(note, buttons);
    append(node);
  },
  'approval.decided'(ev) {
    const node = timeline().querySelector(`[data-approval-id="${CSS.escape(ev.approval_id)}"]`);
    const text = `${ev.decision === 'approved' ? 'Approved' : 'Denied'} by ${ev.by}${ev.note ? `: ${ev.note}` : ''}`;
    if (!node) { append(el('li', 'state-line', text)); return; }
    node.dataset.state = ev.decision;
    node.querySelectorAll('button, input').forEach((b) => { b.disabled = true; });
    const line = el('div', 'approval-decision', text);
    line.dataset.testid = 'approval-decision';
    node.appendChild(line);
  },
  'task.finished'(ev) {
    setStatus(ev.status);
    refreshFiles();
    // A step that never reported back (the task was stopped or crashed) must
    // not keep spinning after the task is over.
    for (const [key, step] of state.steps) {
      if (key.startsWith(`${ev.task_id}:`) && step.dataset.state === 'running') {
        step.dataset.state = 'cancelled';
        step.querySelector('.step-state').textContent = '–';
      }
    }
    const node = el('li', 'result');
    node.dataset.testid = 'result';
    node.dataset.status = ev.status;
    const head = el('div', 'result-head', ev.status === 'succeeded' ? '✓ Done' : ev.status === 'stopped' ? '■ Stopped' : '✗ Failed');
    const usage = usageText(ev.prompt_tokens || 0, ev.completion_tokens || 0);
    const meta = el('span', 'meta', `${ev.steps} step${ev.steps === 1 ? '' : 's'}${usage ? ` · ${usage}` : ''}`);
    meta.dataset.testid = 'result-meta';
    head.appendChild(meta);
    node.append(head, el('div', 'result-text', ev.reply || ev.error?.message || ''));
    append(node);
  },
};

function handleEvent(ev) {
  if (ev.kind === 'gateway.takeover') {
    setTakeover(ev.takeover, ev.viewer === state.viewerId);
    return;
  }
  if (ev.session_id !== state.sessionId) return;
  if (['task.started', 'task.state', 'task.finished'].includes(ev.kind)) refreshSessionsSoon();
  // History and the live socket overlap around a reload; show each event once.
  const key = `${ev.kind}|${ev.task_id}|${ev.step ?? ''}|${ev.at}`;
  if (state.seen.has(key)) return;
  state.seen.add(key);
  render[ev.kind]?.(ev);
}

// --- event socket --------------------------------------------------------------

function setDot(sel, status, text) {
  const node = $(sel);
  node.dataset.state = status;
  node.querySelector('.text').textContent = text;
}

// Reads the session's history on from state.lastSeq (the events stream's
// sequence of the last event read): after the socket opens, whatever happened
// while it was down (a gateway restart) is replayed; and a moment after live
// events, so the position stays close behind them and a reconnect replays
// little. What both the socket and the history deliver is shown once
// (handleEvent).
async function catchUp(sid, ws) {
  for (;;) {
    const after = state.lastSeq ? `?after=${state.lastSeq}` : '';
    const history = await api(`/api/sessions/${sid}/events${after}`);
    if (sid !== state.sessionId || state.events !== ws) return;
    history.events.forEach(handleEvent);
    state.lastSeq = Math.max(state.lastSeq, history.last_seq || 0);
    if (!history.truncated || !history.events.length) return;
  }
}

function connectEvents(delay = 500) {
  const sid = state.sessionId;
  const ws = new WebSocket(`${wsBase}/ws/events?session_id=${encodeURIComponent(sid)}`);
  state.events = ws;
  let pending = null;
  setDot('#events-status', 'connecting', 'Events');
  ws.onopen = async () => {
    setDot('#events-status', 'connected', 'Events live');
    delay = 500;
    try {
      await catchUp(sid, ws);
    } catch (err) {
      addError(`Could not load the session history: ${err.message}`);
    }
  };
  ws.onmessage = (msg) => {
    if (state.events !== ws) return; // a socket of the session shown before
    let ev;
    try { ev = JSON.parse(msg.data); } catch (err) { console.error('bad event', err); return; }
    handleEvent(ev);
    if (ev.kind !== 'gateway.takeover' && !pending) {
      pending = setTimeout(() => {
        pending = null;
        catchUp(sid, ws).catch(() => { /* the next event or reconnect tries again */ });
      }, 1500);
    }
  };
  ws.onclose = (evt) => {
    if (state.events !== ws) return;
    if (evt.code === 1008) { location.reload(); return; }
    setDot('#events-status', 'error', 'Events offline');
    // Capped low: a restarted gateway is back within seconds, and the page
    // should be too.
    setTimeout(() => { if (state.events === ws) connectEvents(Math.min(delay * 2, 2000)); }, delay);
  };
}

// --- live desktop --------------------------------------------------------------

function connectDesktop(delay = 1000) {
  // Each session shows its own desktop (the gateway picks it by session id);
  // a retry of the desktop shown before must not replace the current one.
  const gen = ++state.desktopGen;
  if (state.rfb) {
    const old = state.rfb;
    state.rfb = null;
    try { old.disconnect(); } catch { /* already closed */ }
  }
  const overlay = $('#screen-overlay');
  setDot('#vnc-status', 'connecting', 'Connecting…');
  const sid = state.sessionId;
  const url = `${wsBase}/ws/vnc?session_id=${encodeURIComponent(sid)}&viewer=${state.viewerId}`;
  const rfb = new RFB($('#screen'), url, { shared: true });
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.viewOnly = !state.inControl;
  rfb.background = '#07090d';
  state.rfb = rfb;
  let reason = '';
  rfb.addEventListener('connect', () => {
    if (state.rfb !== rfb) return;
    delay = 1000;
    overlay.hidden = true;
    setDot('#vnc-status', 'connected', 'Live');
  });
  rfb.addEventListener('securityfailure', (e) => { reason = e.detail.reason || 'refused'; });
  rfb.addEventListener('disconnect', (e) => {
    if (state.rfb !== rfb) return;
    state.rfb = null;
    setDot('#vnc-status', 'error', 'Disconnected');
    $('#screen-overlay-text').textContent =
      `${reason || (e.detail.clean ? 'The desktop closed the connection.' : 'Connection lost.')} Retrying…`;
    overlay.hidden = false;
    setTimeout(() => { if (state.desktopGen === gen) connectDesktop(Math.min(delay * 2, 4000)); }, delay);
  });
}

// --- session list --------------------------------------------------------------

function sessionItem(s) {
  const li = el('li', 'session-item');
  li.dataset.testid = 'session-item';
  li.dataset.session = s.session_id;
  li.dataset.status = s.status;
  li.title = s.session_id;
  if (s.session_id === state.sessionId) li.classList.add('current');
  const prompt = s.last_prompt
    ? el('div', 'session-prompt', clip(s.last_prompt, 90))
    : el('div', 'session-prompt none', 'New session');
  const meta = el('div', 'session-meta');
  const badge = el('span', 'badge', STATUS_TEXT[s.status] || s.status);
  badge.dataset.status = s.status;
  badge.dataset.testid = 'session-status';
  meta.append(badge, el('span', 'session-time', ago(s.updated)));
  const close = el('button', 'session-close', '×');
  close.type = 'button';
  close.title = state.desktops === 'per_session'
    ? 'Close: stop its task and free its desktop' : 'Close: stop its task';
  close.dataset.testid = 'session-close';
  close.addEventListener('click', (e) => { e.stopPropagation(); closeSession(s.session_id); });
  if (FINISHED.has(s.status)) {
    // A past session opens straight into its replay.
    const again = el('button', 'session-replay ghost small', '▶');
    again.type = 'button';
    again.title = 'Replay its steps';
    again.dataset.testid = 'session-replay';
    again.addEventListener('click', (e) => {
      e.stopPropagation();
      if (s.session_id !== state.sessionId) openSession(s.session_id);
      openReplay(s.session_id);
    });
    meta.appendChild(again);
  }
  li.append(prompt, meta, close);
  li.addEventListener('click', () => { if (s.session_id !== state.sessionId) openSession(s.session_id); });
  return li;
}

function renderSessions() {
  const shown = [...state.sessions];
  // Just started and not listed yet: still the one on screen.
  if (state.sessionId && !shown.some((s) => s.session_id === state.sessionId)) {
    const now = new Date().toISOString();
    shown.unshift({ session_id: state.sessionId, status: state.status, last_prompt: null, updated: now });
  }
  $('#session-list').replaceChildren(...shown.map(sessionItem));
}

async function refreshSessions() {
  try {
    const res = await api('/api/sessions');
    state.sessions = res.sessions;
    state.desktops = res.desktops;
  } catch (err) {
    console.warn('could not list the sessions', err);
  }
  renderSessions();
  return state.sessions;
}

let refreshTimer = null;
function refreshSessionsSoon() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; refreshSessions(); }, 300);
}

async function newSession() {
  const buttons = [$('#new-session'), $('#new-session-side')];
  buttons.forEach((b) => { b.disabled = true; });
  try {
    // With per-session desktops this returns once the new desktop is ready.
    const res = await api('/api/sessions', undefined, 'POST');
    openSession(res.session_id);
    await refreshSessions();
    return res.session_id;
  } catch (err) {
    addError(`Could not start a new session: ${err.message}`);
    return null;
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

async function closeSession(sid) {
  try {
    await api(`/api/sessions/${encodeURIComponent(sid)}`, undefined, 'DELETE');
  } catch (err) {
    addError(`Could not close the session: ${err.message}`);
    return;
  }
  const sessions = (await refreshSessions()).filter((s) => s.session_id !== sid);
  if (sid !== state.sessionId) return;
  if (sessions.length) openSession(sessions[0].session_id);
  else await newSession();
}

// --- replay: a session's steps from what was kept ------------------------------

const SVG_NS = 'http://www.w3.org/2000/svg';
const FINISHED = new Set(['succeeded', 'failed', 'stopped', 'interrupted']);
const replay = { sid: null, steps: [], index: 0, timer: null };

function svg(tag, attrs, cls) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (cls) node.setAttribute('class', cls);
  return node;
}

// The session's steps in order, each with its planned, grounded and executed events.
export function replaySteps(events) {
  const prompts = new Map();
  const byKey = new Map();
  const steps = [];
  for (const ev of events) {
    const key = `${ev.task_id}:${ev.step}`;
    if (ev.kind === 'task.started') prompts.set(ev.task_id, ev.prompt);
    else if (ev.kind === 'step.planned') {
      const step = { task_id: ev.task_id, step: ev.step, prompt: prompts.get(ev.task_id) || '', planned: ev };
      byKey.set(key, step);
      steps.push(step);
    } else if (ev.kind === 'step.grounded' && byKey.has(key)) byKey.get(key).grounded = ev;
    else if (ev.kind === 'step.executed' && byKey.has(key)) byKey.get(key).executed = ev;
  }
  return steps;
}

function label(marks, x, y, text, size) {
  const node = svg('text', { x, y, 'font-size': size }, 'mark-label');
  node.textContent = text;
  marks.appendChild(node);
  const box = node.getBBox();
  const pad = size / 3;
  marks.insertBefore(svg('rect', {
    x: box.x - pad, y: box.y - pad, width: box.width + 2 * pad, height: box.height + 2 * pad, rx: pad,
  }, 'mark-label-bg'), node);
}

// The step's action drawn on its screenshot (width x height image pixels).
function drawMarks(step, width, height) {
  const marks = $('#replay-marks');
  marks.replaceChildren();
  if (!width || !height) return;
  marks.setAttribute('viewBox', `0 0 ${width} ${height}`);
  // The action as carried out is in screen pixels; the screenshot may be smaller.
  const ran = step.executed?.ok && step.executed.screen_width ? step.executed : null;
  const action = ran ? ran.action : step.planned.action;
  const sx = ran ? width / ran.screen_width : 1;
  const sy = ran ? height / ran.screen_height : 1;
  const size = Math.max(14, Math.round(width / 55));
  const kind = action.action;
  marks.dataset.mark = kind;
  if (kind === 'drag' && action.path?.length) {
    const points = action.path.map((p) => `${Math.round(p.x * sx)},${Math.round(p.y * sy)}`).join(' ');
    marks.appendChild(svg('polyline', { points }, 'mark-path'));
    const [first, last] = [action.path[0], action.path[action.path.length - 1]];
    marks.appendChild(svg('circle', { cx: Math.round(first.x * sx), cy: Math.round(first.y * sy), r: size / 2 }, 'mark'));
    marks.appendChild(svg('circle', { cx: Math.round(last.x * sx), cy: Math.round(last.y * sy), r: size / 3 }, 'mark-dot'));
    label(marks, Math.round(last.x * sx) + size, Math.round(last.y * sy) - size, summarize(action), size);
    return;
  }
  if (action.x != null && action.y != null) {
    const cx = Math.round(action.x * sx);
    const cy = Math.round(action.y * sy);
    const ring = svg('circle', { cx, cy, r: size }, 'mark');
    ring.dataset.testid = 'replay-point';
    marks.append(ring, svg('circle', { cx, cy, r: 4 }, 'mark-dot'));
    const left = cx > width * 0.6;
    label(marks, left ? Math.max(4, cx - size * 14) : cx + size * 1.5, Math.max(size * 1.5, cy - size), summarize(action), size);
    return;
  }
  // Typed text, keys and the rest: a caption at the top of the screen.
  label(marks, size, size * 1.8, summarize(action), size);
}

function showReplayStep(index) {
  if (!replay.steps.length) return;
  replay.index = Math.max(0, Math.min(index, replay.steps.length - 1));
  const step = replay.steps[replay.index];
  $('#replay-scrub').value = String(replay.index);
  $('#replay-pos').textContent = `${replay.index + 1} / ${replay.steps.length}`;
  const when = $('#replay-after').checked ? 'after' : 'before';
  const image = $('#replay-image');
  const missing = $('#replay-missing');
  const url = `/api/sessions/${encodeURIComponent(replay.sid)}/steps/${step.step}/screenshot`
    + `?when=${when}&task_id=${encodeURIComponent(step.task_id)}`;
  image.onload = () => {
    if (image.dataset.url !== url) return;
    missing.hidden = true;
    image.hidden = false;
    drawMarks(step, image.naturalWidth, image.naturalHeight);
    image.dataset.shown = `${step.task_id}:${step.step}:${when}`;
  };
  image.onerror = () => {
    if (image.dataset.url !== url) return;
    image.hidden = true;
    missing.hidden = false;
    $('#replay-marks').replaceChildren();
    image.dataset.shown = `${step.task_id}:${step.step}:${when}:missing`;
  };
  image.dataset.url = url;
  image.src = url;
  renderReplayInfo(step);
}

function renderReplayInfo(step) {
  const info = $('#replay-info');
  const { planned, grounded, executed } = step;
  const lines = [];
  const line = (text, cls = 'replay-line', testid = null) => {
    const node = el('div', cls, text);
    if (testid) node.dataset.testid = testid;
    lines.push(node);
  };
  line(`Step ${step.step} · ${clip(step.prompt, 120)}`);
  line(summarize(planned.action), 'replay-action', 'replay-action');
  if (planned.thought) line(planned.thought, 'replay-thought', 'replay-thought');
  if (grounded) line(`Located “${clip(grounded.target, 80)}” at (${grounded.x}, ${grounded.y}) · ${grounded.method}`, 'replay-line', 'replay-grounding');
  if (executed) {
    line(executed.ok ? `✓ ${executed.output ? clip(executed.output, 200) : 'done'}` : `✗ ${executed.error?.message || 'failed'}`, 'replay-line', 'replay-result');
  }
  const timings = [];
  if (planned.model_ms) timings.push(`model ${fmtMs(planned.model_ms)}`);
  if (executed?.duration_ms) timings.push(`action ${fmtMs(executed.duration_ms)}`);
  if (executed?.settle_ms) timings.push(`settle ${fmtMs(executed.settle_ms)}`);
  const usage = usageText(planned.prompt_tokens || 0, planned.completion_tokens || 0);
  if (usage) timings.push(usage);
  if (timings.length) line(timings.join(' · '), 'replay-line', 'replay-timings');
  info.replaceChildren(...lines);
}

function stopPlaying() {
  if (replay.timer) clearInterval(replay.timer);
  replay.timer = null;
  $('#replay-play').textContent = 'Play';
}

function togglePlay() {
  if (replay.timer) { stopPlaying(); return; }
  if (replay.index >= replay.steps.length - 1) showReplayStep(0);
  $('#replay-play').textContent = 'Pause';
  replay.timer = setInterval(() => {
    if (replay.index >= replay.steps.length - 1) { stopPlaying(); return; }
    showReplayStep(replay.index + 1);
  }, 1500);
}

async function openReplay(sid) {
  let history;
  try {
    history = await api(`/api/sessions/${encodeURIComponent(sid)}/events?limit=100000`);
  } catch (err) {
    addError(`Could not load the session for replay: ${err.message}`);
    return;
  }
  if (sid !== state.sessionId) return;
  replay.sid = sid;
  replay.steps = replaySteps(history.events);
  if (!replay.steps.length) { addError('This session has no steps to replay yet.'); return; }
  stopPlaying();
  $('#replay-scrub').max = String(replay.steps.length - 1);
  $('#replay').hidden = false;
  showReplayStep(0);
}

function closeReplay() {
  stopPlaying();
  $('#replay').hidden = true;
}

function initReplay() {
  $('#replay-open').addEventListener('click', () => openReplay(state.sessionId));
  $('#replay-close').addEventListener('click', closeReplay);
  $('#replay-play').addEventListener('click', togglePlay);
  $('#replay-prev').addEventListener('click', () => { stopPlaying(); showReplayStep(replay.index - 1); });
  $('#replay-next').addEventListener('click', () => { stopPlaying(); showReplayStep(replay.index + 1); });
  $('#replay-scrub').addEventListener('input', (e) => { stopPlaying(); showReplayStep(Number(e.target.value)); });
  $('#replay-after').addEventListener('change', () => showReplayStep(replay.index));
}

// --- sessions and composer -----------------------------------------------------

function openSession(sid) {
  const switching = sid !== state.sessionId;
  state.sessionId = sid;
  localStorage.setItem('selfagent.session', sid);
  $('#session-id').textContent = sid.slice(0, 8);
  $('#session-id').title = sid;
  if (state.emptyTemplate) timeline().replaceChildren(state.emptyTemplate);
  state.seen.clear();
  state.lastSeq = 0;
  state.steps.clear();
  state.thoughts.clear();
  state.answers.clear();
  setStatus('idle');
  $('#file-list').replaceChildren();
  refreshFiles();
  // View only until the session's own take-over notice (the events socket's first frame) says otherwise.
  setTakeover(false, false);
  if (state.events) { const old = state.events; state.events = null; old.close(); }
  closeReplay();
  connectEvents();
  if (switching || !state.rfb) connectDesktop();
  renderSessions();
}

async function decide(node, command, text) {
  node.querySelectorAll('button').forEach((b) => { b.disabled = true; });
  const body = { command, approval_id: node.dataset.approvalId };
  if (text) body.text = text;
  try {
    await api(`/api/sessions/${state.sessionId}/control`, body);
  } catch (err) {
    node.querySelectorAll('button').forEach((b) => { b.disabled = false; });
    addError(`Decision not sent: ${err.message}`);
  }
}

async function answer(text) {
  const bubble = addUser(text);
  bubble.dataset.answer = 'true';
  state.answers.add(text);
  $('#prompt').value = '';
  $('#send').disabled = true;
  try {
    await api(`/api/sessions/${state.sessionId}/control`, { command: 'answer', text });
  } catch (err) {
    bubble.remove();
    state.answers.delete(text);
    $('#prompt').value = text;
    addError(`Answer not sent: ${err.message}`);
  } finally {
    $('#send').disabled = false;
  }
}

// --- files ---------------------------------------------------------------------

const attached = [];

function renderAttachments() {
  const list = $('#attachments');
  list.replaceChildren(...attached.map((item, i) => {
    const chip = el('li', 'attachment', `${item.file.name} `);
    chip.dataset.testid = 'attachment';
    chip.dataset.state = item.state;
    const progress = el('span', 'attachment-progress', item.state === 'uploading' ? `${item.percent}%` : '');
    const remove = el('button', 'ghost small', '×');
    remove.type = 'button';
    remove.title = 'Remove';
    remove.addEventListener('click', () => { attached.splice(i, 1); renderAttachments(); });
    chip.append(progress, remove);
    return chip;
  }));
}

function attach(files) {
  for (const file of files) attached.push({ file, state: 'ready', percent: 0 });
  renderAttachments();
}

// XMLHttpRequest, not fetch: only it reports upload progress.
function uploadOne(item) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append('files', item.file, item.file.name);
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `/api/sessions/${encodeURIComponent(state.sessionId)}/files`);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) { item.percent = Math.round((100 * e.loaded) / e.total); renderAttachments(); }
    };
    xhr.onload = () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch { /* reported by status */ }
      if (xhr.status === 201) resolve(data.files[0].path);
      else reject(new Error(data?.detail || `HTTP ${xhr.status}`));
    };
    xhr.onerror = () => reject(new Error('network error'));
    item.state = 'uploading';
    renderAttachments();
    xhr.send(form);
  });
}

async function uploadAttached() {
  const paths = [];
  for (const item of attached) {
    if (item.state !== 'done') {
      item.path = await uploadOne(item);
      item.state = 'done';
      renderAttachments();
    }
    paths.push(item.path);
  }
  return paths;
}

async function refreshFiles() {
  if (!state.sessionId || !$('#files').open) return;
  const list = $('#file-list');
  try {
    const listing = await api(`/api/sessions/${encodeURIComponent(state.sessionId)}/files/list?recursive=true`);
    const files = listing.entries.filter((e) => e.type === 'file').sort((a, b) => b.mtime - a.mtime);
    list.replaceChildren(...files.slice(0, 200).map((entry) => {
      const li = el('li', 'file');
      const link = el('a', '', entry.path);
      link.href = `/api/sessions/${encodeURIComponent(state.sessionId)}/files?path=${encodeURIComponent(entry.path)}`;
      link.download = entry.path.split('/').pop();
      link.dataset.testid = 'file-link';
      li.append(link, el('span', 'meta', fmtSize(entry.size)));
      return li;
    }));
    if (!files.length) list.replaceChildren(el('li', 'meta', 'No files yet.'));
  } catch (err) {
    list.replaceChildren(el('li', 'meta', `Files unavailable: ${err.message}`));
  }
}

function fmtSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

async function submit(prompt) {
  let text = prompt.trim();
  if (!text) return;
  if (state.status === 'needs_user') { await answer(text); return; }
  if (attached.length) {
    $('#send').disabled = true;
    try {
      const paths = await uploadAttached();
      // The model learns where the person's files are.
      text += `\n\nAttached files: ${paths.join(', ')}`;
      attached.length = 0;
      renderAttachments();
    } catch (err) {
      addError(`Upload failed: ${err.message}`);
      $('#send').disabled = false;
      return;
    } finally {
      $('#send').disabled = false;
    }
  }
  let bubble = addUser(text);
  $('#prompt').value = '';
  $('#send').disabled = true;
  try {
    // No session (starting one failed): the task starts one.
    const body = state.sessionId ? { prompt: text, session_id: state.sessionId } : { prompt: text };
    const res = await api('/api/tasks', body);
    if (!state.sessionId) {
      openSession(res.session_id);
      bubble = addUser(text);
    }
    bubble.dataset.task = res.task_id;
    refreshSessionsSoon();
    if (state.status === 'idle' || ['succeeded', 'failed', 'stopped'].includes(state.status)) setStatus('running');
  } catch (err) {
    bubble.remove();
    $('#prompt').value = text;
    addError(`Not sent: ${err.message}`);
  } finally {
    $('#send').disabled = false;
  }
}

// Session ids become NATS subject tokens; their rule is served from the
// message schema (schemas/subjects.py) rather than copied here.
async function loadIdPattern() {
  const schema = await api('/api/schemas/TaskSubmitted.json');
  state.idPattern = schema.properties.session_id.pattern;
  return new RegExp(state.idPattern);
}

// The model endpoints as the planner and the grounder last found them: a
// banner says what to change while one does not answer or lacks the model.
async function refreshStatus() {
  const banner = $('#model-banner');
  try {
    const status = await api('/api/status');
    banner.hidden = status.problems.length === 0;
    banner.dataset.checked = String(Date.now());
    banner.replaceChildren(
      el('strong', '', 'The model endpoint needs attention. '),
      ...status.problems.map((line) => el('div', 'problem', line)),
    );
  } catch {
    // The gateway itself is unreachable: the connection dots already say so.
  }
}

async function init() {
  // This page's own id for its VNC connections (kept across reconnects, so a
  // page that took over gets its input back after a network blip).
  state.viewerId = newId();
  refreshStatus();
  setInterval(refreshStatus, 10000);
  const emptyTemplate = timeline().querySelector('.empty');
  state.emptyTemplate = emptyTemplate;
  emptyTemplate.querySelectorAll('.chip').forEach((chip) => chip.addEventListener('click', () => {
    $('#prompt').value = chip.textContent;
    $('#prompt').focus();
  }));
  $('#composer').addEventListener('submit', (e) => { e.preventDefault(); submit($('#prompt').value); });
  $('#prompt').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit($('#prompt').value); }
  });
  document.querySelectorAll('.controls button').forEach((b) =>
    b.addEventListener('click', () => sendControl(b.dataset.command)));
  $('#attach').addEventListener('click', () => $('#file-input').click());
  $('#file-input').addEventListener('change', (e) => { attach(e.target.files); e.target.value = ''; });
  const pane = document.querySelector('.chat-pane');
  pane.addEventListener('dragover', (e) => { e.preventDefault(); pane.classList.add('dropping'); });
  pane.addEventListener('dragleave', () => pane.classList.remove('dropping'));
  pane.addEventListener('drop', (e) => {
    e.preventDefault();
    pane.classList.remove('dropping');
    if (e.dataTransfer?.files?.length) attach(e.dataTransfer.files);
  });
  $('#files').addEventListener('toggle', () => refreshFiles());
  $('#new-session').addEventListener('click', () => newSession());
  $('#new-session-side').addEventListener('click', () => newSession());
  initReplay();
  const saved = localStorage.getItem('selfagent.session');
  let validId = () => false;
  try {
    const pattern = await loadIdPattern();
    validId = (id) => pattern.test(id);
  } catch (err) {
    // Without the rule a saved id cannot be trusted; the gateway's ids always fit it.
    console.warn('could not load the id pattern', err);
  }
  // The session viewed last if it still exists, else the newest, else a new one.
  const sessions = await refreshSessions();
  const exists = (id) => sessions.some((s) => s.session_id === id);
  if (saved && validId(saved) && exists(saved)) openSession(saved);
  else if (sessions.length) openSession(sessions[0].session_id);
  else if (!await newSession()) setStatus('idle');
  setInterval(refreshSessions, 5000);
}

init();
