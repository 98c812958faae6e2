// createBatcher() against a real gateway (`batchgate --demo` on a free port), counting batches through an
// injected fetch; and, through a fake gateway the test feeds, that each caller resolves with its own part.

import { test, before, after, mock } from 'node:test';
import assert from 'node:assert/strict';
import { createBatcher, BatchError } from '../batchgate.js';
import { startGateway, countingFetch } from '../test-support/gateway.mjs';

let gateway;
before(async () => {
  gateway = await startGateway();
});
after(async () => {
  await gateway?.stop();
});

const message = (id) => `/mail/v1/messages/${id}`;
const nextTask = () => new Promise((resolve) => setImmediate(resolve));

test('100 concurrent calls in one tick are ONE batch; each caller gets its own message', async () => {
  const fetch = countingFetch();
  const batched = createBatcher({ url: gateway.url, maxSize: 100, fetch });
  const ids = Array.from({ length: 100 }, (_, i) => String(i + 1));
  const responses = await Promise.all(ids.map((id) => batched(message(id))));
  assert.equal(fetch.calls.length, 1);
  assert.equal(fetch.calls[0].parts, 100);
  assert.ok(responses.every((r) => r instanceof Response && r.status === 200));
  const messages = await Promise.all(responses.map((r) => r.json()));
  assert.deepEqual(
    messages.map((m) => m.id),
    ids,
  );
});

test('maxSize splits the calls: 120 calls with maxSize 50 are 3 batches', async () => {
  const fetch = countingFetch();
  const batched = createBatcher({ url: gateway.url, maxSize: 50, fetch });
  const ids = Array.from({ length: 120 }, (_, i) => String(i + 1));
  const messages = await Promise.all(ids.map((id) => batched(message(id)).then((r) => r.json())));
  assert.deepEqual(
    fetch.calls.map((c) => c.parts),
    [50, 50, 20],
  );
  assert.deepEqual(
    messages.map((m) => m.id),
    ids,
  );
});

test('calls in different ticks are different batches with maxWait 0', async () => {
  const fetch = countingFetch();
  const batched = createBatcher({ url: gateway.url, fetch });
  const a = batched(message(1));
  await nextTask();
  const b = batched(message(2));
  assert.deepEqual(
    await Promise.all([a, b].map(async (r) => (await (await r).json()).id)),
    ['1', '2'],
  );
  assert.deepEqual(
    fetch.calls.map((c) => c.parts),
    [1, 1],
  );
});

test('maxWait groups the calls made within its window, across ticks', async (t) => {
  const fetch = countingFetch();
  const batched = createBatcher({ url: gateway.url, maxWait: 100, fetch });
  // Virtual time for the batcher's window only; the fetches themselves run on real timers.
  t.mock.timers.enable({ apis: ['setTimeout'] });
  let inWindow;
  try {
    const a = batched(message(1));
    await nextTask();
    t.mock.timers.tick(60);
    const b = batched(message(2));
    await nextTask();
    t.mock.timers.tick(39);
    await nextTask();
    assert.equal(fetch.calls.length, 0, 'nothing is sent before the window has passed');
    t.mock.timers.tick(1);
    inWindow = [a, b];
    // The window has passed: a later call opens the next batch.
    const c = batched(message(3));
    t.mock.timers.tick(100);
    inWindow.push(c);
  } finally {
    t.mock.timers.reset();
  }
  const ids = await Promise.all(inWindow.map(async (r) => (await (await r).json()).id));
  assert.deepEqual(ids, ['1', '2', '3']);
  assert.deepEqual(
    fetch.calls.map((c) => c.parts),
    [2, 1],
  );
});

test('an aborted caller leaves the batch before it is sent and rejects with an AbortError', async () => {
  const fetch = countingFetch();
  const batched = createBatcher({ url: gateway.url, fetch });
  const controller = new AbortController();
  const a = batched(message(1));
  const b = batched(message(2), { signal: controller.signal });
  const c = batched(message(3));
  controller.abort();
  await assert.rejects(b, { name: 'AbortError' });
  assert.deepEqual(
    await Promise.all([a, c].map(async (r) => (await (await r).json()).id)),
    ['1', '3'],
  );
  assert.deepEqual(
    fetch.calls.map((x) => x.parts),
    [2],
  );

  // Aborted before the call: rejected at once, nothing sent.
  await assert.rejects(batched(message(4), { signal: AbortSignal.abort() }), { name: 'AbortError' });
  // The only caller of a batch aborts: no batch at all.
  const lone = new AbortController();
  const d = batched(message(5), { signal: lone.signal });
  lone.abort();
  await assert.rejects(d, { name: 'AbortError' });
  await nextTask();
  assert.equal(fetch.calls.length, 1);
});

test('a failed batch rejects every caller of that batch with the batch error', async () => {
  const fetch = countingFetch();
  // 101 parts is over the demo gateway's max_parts (100): the whole batch is refused with 413.
  const batched = createBatcher({ url: gateway.url, maxSize: 200, fetch });
  const calls = Array.from({ length: 101 }, (_, i) => batched(message(i + 1)));
  const outcomes = await Promise.allSettled(calls);
  assert.equal(fetch.calls.length, 1);
  assert.ok(outcomes.every((o) => o.status === 'rejected'));
  const error = outcomes[0].reason;
  assert.ok(error instanceof BatchError);
  assert.equal(error.status, 413);
  assert.match(error.error.message, /Received: 101, Limit: 100/);
  assert.ok(outcomes.every((o) => o.reason === error));
});

test('a part the gateway could not run resolves as a Response with its status, like fetch', async () => {
  const batched = createBatcher({ url: gateway.url });
  const [missing, unrouted, ok] = await Promise.all([
    batched(message(999999)),
    batched('/nowhere/at/all'),
    batched(message(7), { headers: { accept: 'application/json' } }),
  ]);
  assert.equal(missing.status, 404);
  assert.equal(unrouted.status, 404);
  assert.equal((await unrouted.json()).error.fault, 'client');
  assert.equal((await ok.json()).id, '7');
});

test('POSTs and Request objects go through the batcher', async () => {
  const batched = createBatcher({ url: gateway.url });
  const [created, fromRequest] = await Promise.all([
    batched('/mail/v1/messages', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ title: 'via batcher' }),
    }),
    batched(new Request(new URL(message(8), gateway.url))),
  ]);
  assert.equal(created.status, 201);
  assert.deepEqual((await created.json()).draft, { title: 'via batcher' });
  assert.equal((await fromRequest.json()).id, '8');
});

test('each caller resolves as soon as its own part arrives, before the reply is complete', { timeout: 10_000 }, async () => {
  const boundary = 'fake';
  let push;
  let end;
  let sent;
  const batchSent = new Promise((resolve) => (sent = resolve));
  const fetch = async () => {
    sent();
    const stream = new ReadableStream({
      start(controller) {
        push = (text) => controller.enqueue(new TextEncoder().encode(text));
        end = () => controller.close();
      },
    });
    return new Response(stream, { headers: { 'content-type': `multipart/mixed; boundary=${boundary}` } });
  };
  const part = (i, body) =>
    `--${boundary}\r\nContent-Type: application/http\r\nContent-ID: <response-${i}>\r\n\r\n` +
    `HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n\r\n${body}\r\n`;
  const batched = createBatcher({ url: 'http://gateway.test/batch', fetch });
  const first = batched('/one');
  const second = batched('/two');
  let secondSettled = false;
  second.then(() => (secondSettled = true));
  await batchSent;
  push(part(0, 'one'));
  assert.equal(await (await first).text(), 'one');
  assert.equal(secondSettled, false);
  push(part(1, 'two') + `--${boundary}--\r\n`);
  end();
  assert.equal(await (await second).text(), 'two');
});

test('invalid options are refused', () => {
  assert.throws(() => createBatcher({}), TypeError);
  assert.throws(() => createBatcher({ url: 'http://x.test/batch', maxSize: 0 }), RangeError);
  assert.throws(() => createBatcher({ url: 'http://x.test/batch', maxWait: -1 }), RangeError);
});
