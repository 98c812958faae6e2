// The streaming reply parser, fed chunk by chunk through a ReadableStream the test controls, and the
// correlation of reply parts to requests, through an injected fetch that answers a crafted reply.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseReply, batch, batchStream, BatchError } from '../batchgate.js';

const encoder = new TextEncoder();

/** A reply part as the gateway writes it (crates/wire/src/reply.rs): CRLF, exact Content-Length unless `asIs`. */
function part(boundary, { id = null, status = 200, reason = 'OK', headers = [], body = '', asIs = false }) {
  let text = `--${boundary}\r\nContent-Type: application/http\r\n`;
  if (id !== null) text += `Content-ID: ${id}\r\n`;
  text += `\r\nHTTP/1.1 ${status} ${reason}\r\n`;
  for (const [n, v] of headers) text += `${n}: ${v}\r\n`;
  if (!asIs) text += `content-length: ${encoder.encode(body).length}\r\n`;
  return `${text}\r\n${body}\r\n`;
}
const close = (boundary) => `--${boundary}--\r\n`;

/** A ReadableStream the test feeds: `push(text or bytes)`, `end()`. */
function feed() {
  let controller;
  const stream = new ReadableStream({
    start(c) {
      controller = c;
    },
  });
  return {
    stream,
    push: (chunk) => controller.enqueue(typeof chunk === 'string' ? encoder.encode(chunk) : chunk),
    end: () => controller.close(),
  };
}

/** Everything `parseReply` yields for `chunks`, as plain values. */
async function parseAll(chunks, boundary, options) {
  const { stream, push, end } = feed();
  chunks.forEach(push);
  end();
  const out = [];
  for await (const { index, contentId, response } of parseReply(stream, boundary, options)) {
    out.push({
      index,
      contentId,
      status: response.status,
      statusText: response.statusText,
      headers: [...response.headers],
      body: await response.text(),
    });
  }
  return out;
}

const B = 'Ab9xQ2';
const sample =
  part(B, { id: '<response-0>', headers: [['content-type', 'application/json']], body: '{"id":"1"}' }) +
  part(B, { id: '<response-1>', status: 404, reason: 'Not Found', body: `{"x":"\r\n--${B}x and --${B}-"}` }) +
  part(B, { id: 'response-plain', status: 204, reason: 'No Content', asIs: true }) +
  part(B, { id: '<response-3>', status: 304, reason: 'Not Modified', headers: [['content-length', '999']], asIs: true }) +
  part(B, {
    id: '<response-4>',
    status: 502,
    reason: 'Bad Gateway',
    headers: [['content-type', 'application/json']],
    body: '{"error":{"code":502}}',
  }) +
  close(B);

test('the first part is yielded before the rest of the reply is pushed', { timeout: 10_000 }, async () => {
  const { stream, push, end } = feed();
  const parts = parseReply(stream, B);
  let restPushed = false;
  const [first, ...rest] = sample.split(`--${B}\r\n`).slice(1).map((p) => `--${B}\r\n${p}`);
  push(first);
  const next = await parts.next();
  assert.equal(restPushed, false);
  assert.equal(next.done, false);
  assert.equal(next.value.index, 0);
  assert.equal(next.value.contentId, '<response-0>');
  assert.deepEqual(await next.value.response.json(), { id: '1' });

  // The second part, in two pieces: nothing is yielded until its body is complete.
  const second = rest.shift();
  push(second.slice(0, second.length - 10));
  const pending = parts.next();
  restPushed = true;
  push(second.slice(second.length - 10));
  assert.equal((await pending).value.response.status, 404);

  for (const p of rest) push(p);
  end();
  const remaining = [];
  for await (const p of { [Symbol.asyncIterator]: () => parts }) remaining.push(p.response.status);
  assert.deepEqual(remaining, [204, 304, 502]);
});

test('statuses, reasons, headers and bodies; bodies may contain delimiter look-alikes', async () => {
  const parts = await parseAll([sample], B);
  assert.deepEqual(
    parts.map((p) => [p.index, p.contentId, p.status, p.statusText, p.body]),
    [
      [0, '<response-0>', 200, 'OK', '{"id":"1"}'],
      [1, '<response-1>', 404, 'Not Found', `{"x":"\r\n--${B}x and --${B}-"}`],
      [2, 'response-plain', 204, 'No Content', ''],
      [3, '<response-3>', 304, 'Not Modified', ''],
      [4, '<response-4>', 502, 'Bad Gateway', '{"error":{"code":502}}'],
    ],
  );
  assert.deepEqual(parts[0].headers, [
    ['content-length', '10'],
    ['content-type', 'application/json'],
  ]);
  assert.deepEqual(parts[3].headers, [['content-length', '999']]);
});

test('a boundary split across chunks, at every offset, and one byte per chunk', async () => {
  const bytes = encoder.encode(sample);
  const whole = await parseAll([bytes], B);
  for (let k = 1; k < bytes.length; k++) {
    assert.deepEqual(await parseAll([bytes.slice(0, k), bytes.slice(k)], B), whole, `split at ${k}`);
  }
  const single = [];
  for (let i = 0; i < bytes.length; i++) single.push(bytes.slice(i, i + 1));
  assert.deepEqual(await parseAll(single, B), whole);
  // Three chunks cutting the first delimiter and a later one in the middle of the boundary.
  const second = sample.indexOf(`--${B}`, 10);
  assert.deepEqual(
    await parseAll([bytes.slice(0, 4), bytes.slice(4, second + 5), bytes.slice(second + 5)], B),
    whole,
  );
});

test('bodies without Content-Length run to the next delimiter; preamble, padding and epilogue are skipped', async () => {
  const reply =
    `preamble\r\n--${B}  \r\nContent-Type: application/http\r\nContent-ID: <response-a>\r\n\r\n` +
    `HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\nno length\r\nsecond line\r\n` +
    `--${B}\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 500 Internal Server Error\r\n\r\n\r\n` +
    `--${B}--\r\nepilogue`;
  const parts = await parseAll([reply], B);
  assert.deepEqual(
    parts.map((p) => [p.contentId, p.status, p.body]),
    [
      ['<response-a>', 200, 'no length\r\nsecond line'],
      [null, 500, ''],
    ],
  );
});

test('LF-only replies are read too', async () => {
  const reply =
    `--${B}\nContent-ID: <response-0>\n\nHTTP/1.1 200 OK\ncontent-length: 2\n\nok\n` +
    `--${B}\n\nHTTP/1.1 201 Created\n\nmade\n--${B}--\n`;
  const parts = await parseAll([reply], B);
  assert.deepEqual(
    parts.map((p) => [p.status, p.body]),
    [
      [200, 'ok'],
      [201, 'made'],
    ],
  );
});

test('a HEAD answer keeps its Content-Length without a body: with the isHead hint, and without it', async () => {
  const reply =
    part(B, { id: '<response-0>', status: 200, headers: [['content-length', '1']], asIs: true }) +
    part(B, { id: '<response-1>', status: 200, headers: [['content-length', '5000']], asIs: true }) +
    part(B, { id: '<response-2>', body: 'after' }) +
    close(B);
  const expected = [
    ['<response-0>', '1', ''],
    ['<response-1>', '5000', ''],
    ['<response-2>', '5', 'after'],
  ];
  const summary = (parts) => parts.map((p) => [p.contentId, new Map(p.headers).get('content-length'), p.body]);
  assert.deepEqual(summary(await parseAll([reply], B, { isHead: (id) => id !== '<response-2>' })), expected);
  const bytes = encoder.encode(reply);
  for (let k = 1; k < bytes.length; k += 7) {
    assert.deepEqual(summary(await parseAll([bytes.slice(0, k), bytes.slice(k)], B)), expected, `split at ${k}`);
  }
});

test('a truncated reply rejects: inside a body, and before the close delimiter', async () => {
  const truncated = sample.slice(0, sample.indexOf('{"id":"1"}') + 4);
  await assert.rejects(parseAll([truncated], B), (e) => e instanceof BatchError && /ended inside/.test(e.message));
  const unclosed = sample.slice(0, sample.lastIndexOf(`--${B}--`));
  await assert.rejects(parseAll([unclosed], B), /before its closing delimiter/);
});

test('a Content-Length that does not match the body rejects', async () => {
  const reply = `--${B}\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nlonger body\r\n--${B}--\r\n`;
  await assert.rejects(parseAll([reply], B), /reply part 0: no line break after its 3-byte body/);
});

/** A fetch that records the batch it was sent and answers `reply` (chunks) as a multipart/mixed 200. */
function fakeGateway(chunks, { status = 200, contentType = `multipart/mixed; boundary=${B}` } = {}) {
  const sent = [];
  const fetch = async (url, init) => {
    sent.push({ url, init, text: new TextDecoder().decode(init.body) });
    const { stream, push, end } = feed();
    chunks.forEach(push);
    end();
    return new Response(stream, { status, headers: { 'content-type': contentType } });
  };
  return { fetch, sent };
}

test('reply parts are matched to requests by Content-ID, whatever their order', async () => {
  const reply =
    part(B, { id: '<response-2>', body: 'two' }) +
    part(B, { id: '<response-0>', body: 'zero' }) +
    part(B, { id: '<response-1>', body: 'one' }) +
    close(B);
  const { fetch, sent } = fakeGateway([reply]);
  const requests = ['/a', '/b', '/c'].map((url) => ({ url }));
  const responses = await batch('http://gateway.test/batch', requests, { fetch });
  assert.deepEqual(await Promise.all(responses.map((r) => r.text())), ['zero', 'one', 'two']);

  const arrivals = [];
  for await (const { index, contentId } of batchStream('http://gateway.test/batch', requests, { fetch })) {
    arrivals.push([index, contentId]);
  }
  assert.deepEqual(arrivals, [
    [2, '<response-2>'],
    [0, '<response-0>'],
    [1, '<response-1>'],
  ]);

  // What was sent: one part per request, Content-ID <i>, CRLF, the batch's own boundary.
  const { init, text } = sent[0];
  const contentType = init.headers.get('content-type');
  const boundary = /^multipart\/mixed; boundary=(batchgate_[A-Za-z0-9]{32})$/.exec(contentType)[1];
  assert.equal(
    text,
    ['/a', '/b', '/c']
      .map(
        (t, i) =>
          `--${boundary}\r\nContent-Type: application/http\r\nContent-ID: <${i}>\r\n\r\n` +
          `GET ${t} HTTP/1.1\r\n\r\n\r\n`,
      )
      .join('') + `--${boundary}--\r\n`,
  );
});

test('without Content-IDs, reply parts are matched by order', async () => {
  const reply = part(B, { body: 'first' }) + part(B, { id: 'unrelated', body: 'second' }) + close(B);
  const { fetch } = fakeGateway([reply]);
  const responses = await batch('http://gateway.test/batch', [{ url: '/a' }, { url: '/b' }], { fetch });
  assert.deepEqual(await Promise.all(responses.map((r) => r.text())), ['first', 'second']);
});

test('a Content-ID that answers a request twice rejects the reply as malformed', async () => {
  // Taken by position, the second <response-1> would have resolved request 0 with request 1's answer.
  const reply =
    part(B, { id: '<response-1>', body: 'one' }) + part(B, { id: '<response-1>', body: 'not zero' }) + close(B);
  const requests = [{ url: '/a' }, { url: '/b' }];
  const { fetch } = fakeGateway([reply]);
  await assert.rejects(batch('http://gateway.test/batch', requests, { fetch }), (error) => {
    assert.ok(error instanceof BatchError);
    assert.equal(error.status, 200);
    assert.match(
      error.message,
      /reply part 1: Content-ID <response-1> answers request 1, which an earlier reply part already answered/,
    );
    return true;
  });

  // Streaming: the first part is delivered, the duplicate rejects; request 0 never gets an answer.
  const arrivals = [];
  await assert.rejects(async () => {
    for await (const { index, contentId } of batchStream('http://gateway.test/batch', requests, { fetch })) {
      arrivals.push([index, contentId]);
    }
  }, /already answered/);
  assert.deepEqual(arrivals, [[1, '<response-1>']]);
});

test('request encoding: headers, Content-Length for bodies, absolute-form for other origins', async () => {
  const { fetch, sent } = fakeGateway([part(B, {}) + part(B, {}) + part(B, {}) + close(B)]);
  await batch(
    'http://gateway.test/batch',
    [
      { method: 'PUT', url: '/m/1?x=a b', headers: { 'X-Thing': 'v', 'Content-Length': '99' }, body: 'é' },
      { method: 'DELETE', url: 'https://other.test/m/2#frag' },
      { method: 'POST', url: 'http://gateway.test/m' },
    ],
    { fetch, headers: { Authorization: 'Bearer t' } },
  );
  const { init, text } = sent[0];
  assert.equal(init.method, 'POST');
  assert.equal(init.headers.get('authorization'), 'Bearer t');
  assert.match(
    text,
    /\r\nContent-ID: <0>\r\n\r\nPUT \/m\/1\?x=a%20b HTTP\/1\.1\r\ncontent-type: text\/plain;charset=UTF-8\r\nx-thing: v\r\nContent-Length: 2\r\n\r\né\r\n/,
  );
  assert.match(text, /\r\nContent-ID: <1>\r\n\r\nDELETE https:\/\/other\.test\/m\/2 HTTP\/1\.1\r\n\r\n\r\n/);
  assert.match(text, /\r\nContent-ID: <2>\r\n\r\nPOST \/m HTTP\/1\.1\r\nContent-Length: 0\r\n\r\n\r\n/);
});

test('a reply with fewer parts than requests rejects; so does a 200 that is not multipart', async () => {
  const short = fakeGateway([part(B, { id: '<response-0>' }) + close(B)]);
  await assert.rejects(batch('http://gateway.test/batch', [{ url: '/a' }, { url: '/b' }], { fetch: short.fetch }), /1 parts for 2 requests/);
  const json = fakeGateway(['{}'], { contentType: 'application/json' });
  await assert.rejects(batch('http://gateway.test/batch', [{ url: '/a' }], { fetch: json.fetch }), /not multipart\/mixed/);
});

test('large bodies in small chunks: binary bytes come back exact', async () => {
  const big = new Uint8Array(300_000);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7919) % 251;
  const head = (i, n) =>
    encoder.encode(`--${B}\r\nContent-ID: <response-${i}>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: ${n}\r\n\r\n`);
  const tail = encoder.encode(`end\r\n${close(B)}`);
  const pieces = [head(0, big.length), big, encoder.encode('\r\n'), head(1, 3), tail];
  const bytes = new Uint8Array(pieces.reduce((n, p) => n + p.length, 0));
  pieces.reduce((at, p) => (bytes.set(p, at), at + p.length), 0);
  const chunks = [];
  for (let i = 0; i < bytes.length; i += 997) chunks.push(bytes.slice(i, i + 997));
  const { stream, push, end } = feed();
  chunks.forEach(push);
  end();
  const bodies = [];
  for await (const { response } of parseReply(stream, B)) bodies.push(new Uint8Array(await response.arrayBuffer()));
  assert.deepEqual(bodies[0], big);
  assert.equal(new TextDecoder().decode(bodies[1]), 'end');
});
