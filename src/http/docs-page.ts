import { createHash } from 'node:crypto';

/**
 * GET /docs: the OpenAPI document rendered by a small script of our own, embedded in the page.
 * Sites have no internet, so nothing may come from a CDN; the Content-Security-Policy admits only
 * this page's own script and style (by hash) and requests to the same origin, so a later edit that
 * pulls something from outside fails visibly in the browser instead of silently offline.
 */

const STYLE = `
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 70rem; padding: 1rem; color: #1d232a; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ccd; }
details.op { border: 1px solid #ccd; border-radius: 4px; margin: 0.4rem 0; }
details.op > summary { cursor: pointer; padding: 0.4rem 0.6rem; }
details.op > div { padding: 0 0.8rem 0.8rem; }
.method { display: inline-block; width: 4.5rem; font-weight: 600; text-transform: uppercase; }
.get { color: #0b6e4f; } .post { color: #1a4f9c; } .patch { color: #8a5a00; } .delete { color: #a4161a; }
.path { font-family: ui-monospace, monospace; } .lock { color: #8a5a00; margin-left: 0.4rem; }
table { border-collapse: collapse; margin: 0.3rem 0; } td, th { border: 1px solid #dde; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
pre, textarea, input { font-family: ui-monospace, monospace; font-size: 13px; }
pre { background: #f5f6f8; padding: 0.5rem; overflow: auto; max-height: 24rem; }
textarea { width: 100%; min-height: 8rem; box-sizing: border-box; }
label { display: block; margin: 0.2rem 0; } label.inline { display: inline; } label span { display: inline-block; min-width: 12rem; }
button { margin-top: 0.4rem; }
`;

const SCRIPT = `
'use strict';
const doc = JSON.parse(document.getElementById('openapi').textContent);
const el = (tag, attrs, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
};
const resolve = (value) => {
  if (!value || typeof value !== 'object' || typeof value.$ref !== 'string') return value;
  return value.$ref.slice(2).split('/').reduce((node, key) => node[key], doc);
};
const pretty = (value) => JSON.stringify(value, null, 2);
const typeOf = (schema) => {
  const s = resolve(schema) || {};
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(' | ');
  if (s.anyOf) return s.anyOf.map(typeOf).join(' | ');
  return [s.type || 'any', s.format, s.pattern && 'pattern ' + s.pattern,
    s.minimum !== undefined && 'min ' + s.minimum, s.maximum !== undefined && 'max ' + s.maximum,
    s.default !== undefined && 'default ' + s.default].filter(Boolean).join(', ');
};

document.getElementById('title').textContent = doc.info.title + ' ' + doc.info.version;
document.getElementById('description').textContent = doc.info.description;
const token = document.getElementById('token');

const operation = (path, method, op) => {
  const params = (op.parameters || []).map(resolve);
  const body = op.requestBody && op.requestBody.content['application/json'];
  const inputs = new Map();
  const form = el('div', {});
  for (const p of params) {
    const input = el('input', { size: 40, placeholder: p.in + (p.required ? ', required' : '') });
    inputs.set(p, input);
    form.append(el('label', {}, el('span', {}, p.name), input));
  }
  const textarea = body ? el('textarea', { spellcheck: 'false' }) : undefined;
  const examples = body && body.examples ? Object.entries(body.examples) : [];
  if (textarea) {
    textarea.value = examples.length ? pretty(examples[0][1].value) : '{}';
    const picker = el('select', {});
    for (const [name, ex] of examples) picker.append(el('option', { value: name }, ex.summary || name));
    picker.addEventListener('change', () => { textarea.value = pretty(body.examples[picker.value].value); });
    form.append(el('label', {}, el('span', {}, 'example'), picker), textarea);
  }
  const output = el('pre', {}, '');
  const send = el('button', { type: 'button' }, 'Send');
  send.addEventListener('click', async () => {
    let url = path;
    const query = new URLSearchParams();
    const headers = {};
    for (const [p, input] of inputs) {
      if (input.value === '') continue;
      if (p.in === 'path') url = url.replace('{' + p.name + '}', encodeURIComponent(input.value));
      else if (p.in === 'query') query.set(p.name, input.value);
      else if (p.in === 'header') headers[p.name] = input.value;
    }
    if (op.security && token.value) headers.Authorization = 'Bearer ' + token.value;
    if (textarea && textarea.value.trim() !== '') headers['Content-Type'] = 'application/json';
    const search = query.toString();
    output.textContent = '…';
    try {
      const response = await fetch(url + (search ? '?' + search : ''), {
        method: method.toUpperCase(), headers,
        body: textarea && textarea.value.trim() !== '' ? textarea.value : undefined,
      });
      const text = await response.text();
      let shown = text;
      try { shown = pretty(JSON.parse(text)); } catch {}
      const interesting = ['retry-after', 'idempotent-replayed', 'x-request-id'];
      const lines = interesting.filter((h) => response.headers.has(h)).map((h) => h + ': ' + response.headers.get(h));
      output.textContent = [response.status + ' ' + response.statusText, ...lines, '', shown].join('\\n');
    } catch (err) {
      output.textContent = String(err);
    }
  });
  form.append(send, output);

  const rows = params.map((p) => el('tr', {}, el('td', {}, p.name), el('td', {}, p.in),
    el('td', {}, p.required ? 'yes' : ''), el('td', {}, typeOf(p.schema)), el('td', {}, p.description || '')));
  const responses = Object.entries(op.responses).map(([status, r]) => el('tr', {}, el('td', {}, status), el('td', {}, r.description)));
  return el('details', { class: 'op', id: op.operationId },
    el('summary', {}, el('span', { class: 'method ' + method }, method), el('span', { class: 'path' }, path),
      ' — ' + op.summary, op.security ? el('span', { class: 'lock', title: 'admin token' }, '🔒') : ''),
    el('div', {},
      op.description ? el('p', {}, op.description) : '',
      rows.length ? el('table', {}, el('tr', {}, ...['parameter', 'in', 'required', 'schema', ''].map((h) => el('th', {}, h))), ...rows) : '',
      body ? el('details', {}, el('summary', {}, 'request body schema'), el('pre', {}, pretty(body.schema))) : '',
      el('table', {}, el('tr', {}, el('th', {}, 'status'), el('th', {}, 'meaning')), ...responses),
      el('h4', {}, 'Try it'), form));
};

const main = document.getElementById('operations');
for (const tag of doc.tags) {
  const section = el('section', {}, el('h2', {}, tag.name));
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      if (op.tags.includes(tag.name)) section.append(operation(path, method, op));
    }
  }
  main.append(section);
}
`;

const sha256 = (text: string) => `'sha256-${createHash('sha256').update(text).digest('base64')}'`;

/** Builds the page once; `<` is escaped so no string in the document can close the script tag. */
export const renderDocsPage = (document: unknown) => {
  const json = JSON.stringify(document).replaceAll('<', '\\u003c');
  const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Outpost API</title>
<style>${STYLE}</style>
</head>
<body>
<h1 id="title">Outpost</h1>
<p id="description"></p>
<p><a href="openapi.json">openapi.json</a> ·
<label class="inline">admin token <input id="token" type="password" autocomplete="off" size="30"></label>
(sent only to this origin, only with admin operations)</p>
<main id="operations"></main>
<script type="application/json" id="openapi">${json}</script>
<script>${SCRIPT}</script>
</body>
</html>
`;
  const contentSecurityPolicy = [
    "default-src 'none'",
    `script-src ${sha256(SCRIPT)}`,
    `style-src ${sha256(STYLE)}`,
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
  return { html, contentSecurityPolicy };
};
