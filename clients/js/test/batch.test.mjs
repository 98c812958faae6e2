// batch() and batchStream() against a real gateway: `batchgate --demo` on a free port.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { batch, batchStream, BatchError } from '../batchgate.js';
import { startGateway, countingFetch } from '../test-support/gateway.mjs';

let gateway;
before(async () => {
  gateway = await startGateway();
});
after(async () => {
  await gateway?.stop();
});

test('three GETs in one batch: statuses, JSON bodies, request order', async () => {
  const fetch = countingFetch();
  const responses = await batch(
    gateway.url,
    ['1', '2', '3'].map((id) => ({ method: 'GET', url: `/mail/v1/messages/${id}` })),
    { fetch },
  );
  assert.equal(fetch.calls.length, 1);
  assert.equal(fetch.calls[0].parts, 3);
  assert.deepEqual(
    responses.map((r) => [r.status, r.statusText, r.headers.get('content-type')]),
    Array(3).fill([200, 'OK', 'application/json']),
  );
  const messages = await Promise.all(responses.map((r) => r.json()));
  assert.deepEqual(
    messages.map((m) => m.id),
    ['1', '2', '3'],
  );
  assert.equal(messages[1].from, 'carol@example.com');
});

test('a POST with a JSON body gets its 201, Location and body', async () => {
  const [created] = await batch(gateway.url, [
    {
      method: 'post',
      url: '/mail/v1/messages',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ title: 'hello', to: ['ünïcode@example.com'] }),
    },
  ]);
  assert.equal(created.status, 201);
  assert.equal(created.statusText, 'Created');
  const body = await created.json();
  assert.deepEqual(body.draft, { title: 'hello', to: ['ünïcode@example.com'] });
  assert.equal(created.headers.get('location'), `/mail/v1/messages/${body.id}`);
});

test('a 404 part among 200s stays in its place; the others are unaffected', async () => {
  const responses = await batch(gateway.url, [
    { url: '/mail/v1/messages/4' },
    { url: '/mail/v1/messages/999999' },
    { url: '/mail/v1/messages/5' },
  ]);
  assert.deepEqual(
    responses.map((r) => r.status),
    [200, 404, 200],
  );
  assert.equal((await responses[0].json()).id, '4');
  assert.deepEqual(await responses[1].json(), {
    error: { message: 'no such message', path: '/mail/v1/messages/999999' },
  });
  assert.equal((await responses[2].json()).id, '5');
});

test("a part the gateway cannot route is a 404 Response with the gateway's JSON error", async () => {
  const [ok, unrouted] = await batch(gateway.url, [{ url: '/mail/v1/messages/6' }, { url: '/nowhere/1' }]);
  assert.equal(ok.status, 200);
  assert.equal(unrouted.status, 404);
  const { error } = await unrouted.json();
  assert.equal(error.code, 404);
  assert.equal(error.part, 1);
  assert.equal(error.fault, 'client');
  assert.match(error.message, /no route/);
});

test('Content-ID correlation: each reply part names its request', async () => {
  const ids = ['7', '999999', '8', '9'];
  const seen = [];
  for await (const { index, contentId, response } of batchStream(
    gateway.url,
    ids.map((id) => ({ url: `/mail/v1/messages/${id}` })),
  )) {
    seen.push(index);
    assert.equal(contentId, `<response-${index}>`);
    if (response.status === 200) assert.equal((await response.json()).id, ids[index]);
    else assert.equal(ids[index], '999999');
  }
  assert.deepEqual(seen, [0, 1, 2, 3]);
});

test('Request objects, byte and Blob bodies, absolute URLs on the gateway', async () => {
  const json = JSON.stringify({ title: 'bytes' });
  const responses = await batch(gateway.url, [
    new Request(new URL('/mail/v1/messages/10', gateway.url)),
    new Request(new URL('/mail/v1/messages', gateway.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: json,
    }),
    { method: 'POST', url: '/mail/v1/messages', body: new TextEncoder().encode(json) },
    { method: 'POST', url: `${gateway.origin}/mail/v1/messages`, body: new Blob([json], { type: 'application/json' }) },
    { method: 'POST', url: '/mail/v1/messages', body: new TextEncoder().encode(json).buffer },
  ]);
  assert.deepEqual(
    responses.map((r) => r.status),
    [200, 201, 201, 201, 201],
  );
  assert.equal((await responses[0].json()).id, '10');
  for (const r of responses.slice(1)) assert.deepEqual((await r.json()).draft, { title: 'bytes' });
});

test('a HEAD part keeps its Content-Length and has no body; the next part is intact', async () => {
  const [head, get] = await batch(gateway.url, [
    { method: 'HEAD', url: '/mail/v1/messages/11' },
    { url: '/mail/v1/messages/12' },
  ]);
  // The demo has no HEAD route: its 405 answer, without the body it did not send.
  assert.equal(head.status, 405);
  assert.ok(Number(head.headers.get('content-length')) > 0);
  assert.equal(await head.text(), '');
  assert.equal((await get.json()).id, '12');
});

test('a gateway error rejects with its status and JSON error: 101 parts is 413', async () => {
  const requests = Array.from({ length: 101 }, (_, i) => ({ url: `/mail/v1/messages/${i + 1}` }));
  await assert.rejects(batch(gateway.url, requests), (error) => {
    assert.ok(error instanceof BatchError);
    assert.equal(error.status, 413);
    assert.equal(error.error.code, 413);
    assert.match(error.error.message, /Received: 101, Limit: 100/);
    assert.match(error.message, /413/);
    return true;
  });
});

test('exactly max_parts (100) parts are served', async () => {
  const requests = Array.from({ length: 100 }, (_, i) => ({ url: `/mail/v1/messages/${i + 1}` }));
  const responses = await batch(gateway.url, requests);
  const ids = await Promise.all(responses.map(async (r) => (await r.json()).id));
  assert.deepEqual(
    ids,
    requests.map((_, i) => String(i + 1)),
  );
});

test('an empty batch sends nothing', async () => {
  const fetch = countingFetch();
  assert.deepEqual(await batch(gateway.url, [], { fetch }), []);
  assert.equal(fetch.calls.length, 0);
});
