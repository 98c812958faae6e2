// JSON batches (`{format: 'json'}`) from batch(), batchStream() and the batcher, against a real gateway
// (`batchgate --demo` on a free port).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { batch, batchStream, createBatcher } from '../batchgate.js';
import { startGateway, countingFetch } from '../test-support/gateway.mjs';

let gateway;
before(async () => {
  gateway = await startGateway();
});
after(async () => {
  await gateway?.stop();
});

/** A fetch that records the batch bodies it sends. */
function recordingFetch() {
  const bodies = [];
  const fetch = async (url, init) => {
    bodies.push({ type: init.headers.get('content-type'), body: new TextDecoder().decode(init.body) });
    return globalThis.fetch(url, init);
  };
  return { fetch, bodies };
}

test('a JSON batch: GETs and a POST with a JSON body, answered in request order', async () => {
  const { fetch, bodies } = recordingFetch();
  const responses = await batch(
    gateway.url,
    [
      { method: 'GET', url: '/mail/v1/messages/1' },
      {
        method: 'post',
        url: '/mail/v1/messages',
        headers: { 'content-type': 'application/json' },
        body: '{"title": "hello", "to": ["bob@example.com"]}',
      },
      { method: 'GET', url: '/mail/v1/messages/999999' },
    ],
    { format: 'json', fetch },
  );
  assert.equal(bodies.length, 1);
  assert.equal(bodies[0].type, 'application/json');
  const sent = JSON.parse(bodies[0].body);
  assert.deepEqual(
    sent.requests.map((r) => [r.id, r.method, r.url]),
    [
      ['0', 'GET', '/mail/v1/messages/1'],
      ['1', 'POST', '/mail/v1/messages'],
      ['2', 'GET', '/mail/v1/messages/999999'],
    ],
  );
  assert.deepEqual(sent.requests[1].body, { title: 'hello', to: ['bob@example.com'] }, 'a JSON value, not a string');
  assert.deepEqual(
    responses.map((r) => r.status),
    [200, 201, 404],
  );
  assert.equal((await responses[0].json()).id, '1');
  assert.equal((await responses[1].json()).draft.title, 'hello');
  assert.equal((await responses[2].json()).error.message, 'no such message');
});

test('batchStream names each JSON response by its id', async () => {
  const seen = [];
  const requests = ['3', '4'].map((id) => ({ url: `/mail/v1/messages/${id}` }));
  for await (const { index, contentId, response } of batchStream(gateway.url, requests, { format: 'json' })) {
    seen.push([index, contentId, response.status]);
  }
  assert.deepEqual(seen, [
    [0, '0', 200],
    [1, '1', 200],
  ]);
});

test('the batcher sends JSON batches when asked', async () => {
  const fetch = countingFetch();
  const batched = createBatcher({ url: gateway.url, format: 'json', fetch });
  const responses = await Promise.all(['1', '2', '3'].map((id) => batched(`/mail/v1/messages/${id}`)));
  assert.equal(fetch.calls.length, 1);
  assert.deepEqual(
    await Promise.all(responses.map(async (r) => (await r.json()).id)),
    ['1', '2', '3'],
  );
});

test('an unknown format is refused before anything is sent', async () => {
  await assert.rejects(batch(gateway.url, ['/mail/v1/messages/1'], { format: 'xml' }), TypeError);
});
