// Interoperability with a real JSON batch client: Microsoft Graph's JavaScript SDK
// (`@microsoft/microsoft-graph-client` 3.0.7) builds the batch with `BatchRequestContent` and reads the
// gateway's answer with `BatchResponseContent`, against the real binary and its demo mail upstream.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import graph from '@microsoft/microsoft-graph-client';
import { startGateway } from '../test-support/gateway.mjs';

const { BatchRequestContent, BatchResponseContent } = graph;

let gateway;
before(async () => {
  gateway = await startGateway();
});
after(async () => {
  await gateway?.stop();
});

/** Sends the SDK's batch body to the gateway; the SDK's own view of the answer, and the raw JSON. */
async function send(steps) {
  const content = new BatchRequestContent(steps);
  const body = await content.getContent();
  const reply = await fetch(gateway.url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  assert.equal(reply.status, 200, await reply.clone().text());
  assert.equal(reply.headers.get('content-type'), 'application/json');
  const json = await reply.json();
  return { sent: body, json, responses: new BatchResponseContent(json) };
}

test('parallel GETs built by BatchRequestContent come back through BatchResponseContent by id', async () => {
  const steps = ['1', '2', '999999'].map((n) => ({
    id: `m${n}`,
    request: new Request(`${gateway.origin}/mail/v1/messages/${n}`, { method: 'GET' }),
  }));
  const { sent, json, responses } = await send(steps);
  // The SDK strips the origin: the url is the path, as the gateway routes it.
  assert.deepEqual(
    sent.requests.map((r) => r.url),
    ['/mail/v1/messages/1', '/mail/v1/messages/2', '/mail/v1/messages/999999'],
  );
  assert.deepEqual(
    json.responses.map((r) => r.id),
    ['m1', 'm2', 'm999999'],
  );
  assert.equal(responses.getResponseById('m1').status, 200);
  assert.equal(responses.getResponseById('m999999').status, 404);
  assert.equal(responses.getResponses().size, 3);
  // The JSON bodies, as the gateway wrote them (values, not strings).
  assert.equal(json.responses[0].body.id, '1');
  assert.equal(json.responses[2].body.error.message, 'no such message');
});

test('a serial chain (dependsOn) built by the SDK: the POST runs first, a failed step answers 424', async () => {
  const create = {
    id: 'create',
    request: new Request(`${gateway.origin}/mail/v1/messages`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ title: 'from the Graph SDK', to: ['bob@example.com'] }),
    }),
  };
  const missing = {
    id: 'missing',
    request: new Request(`${gateway.origin}/mail/v1/messages/999999`, { method: 'GET' }),
    dependsOn: ['create'],
  };
  const after = {
    id: 'after',
    request: new Request(`${gateway.origin}/mail/v1/messages/1`, { method: 'GET' }),
    dependsOn: ['missing'],
  };
  const { sent, json, responses } = await send([create, missing, after]);
  assert.deepEqual(sent.requests[1].dependsOn, ['create']);
  assert.deepEqual(sent.requests[0].body, { title: 'from the Graph SDK', to: ['bob@example.com'] });
  assert.equal(responses.getResponseById('create').status, 201);
  assert.equal(json.responses[0].body.draft.title, 'from the Graph SDK');
  assert.equal(responses.getResponseById('missing').status, 404);
  assert.equal(responses.getResponseById('after').status, 424, 'not sent: its dependency failed');
});
