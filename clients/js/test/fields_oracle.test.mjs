// Field masks checked against json-mask (npm), the published behaviour the gateway follows: every case of
// tests/fixtures/fields/json-mask.json goes through json-mask and, as a part with `fields=`, through a real
// gateway to a node upstream that answers the case's input; the two must agree, and match the recorded answer
// (which the Rust unit test in src/fields/filter.rs also checks). Skipped, saying so, without json-mask
// installed (`npm ci` here).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { batch } from '../batchgate.js';
import { startGateway } from '../test-support/gateway.mjs';

const cases = JSON.parse(
  readFileSync(new URL('../../../tests/fixtures/fields/json-mask.json', import.meta.url), 'utf8'),
);

let mask;
try {
  mask = (await import('json-mask')).default;
} catch {
  mask = null;
}
const skip = mask ? false : 'json-mask is not installed (run `npm ci` in clients/js)';

let upstream;
let gateway;
let dir;
before(async () => {
  if (skip) return;
  // Answers /oracle/<i> with case i's input as JSON.
  upstream = createServer((req, res) => {
    const index = Number(new URL(req.url, 'http://upstream').pathname.split('/')[2]);
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(cases[index].input));
  });
  await new Promise((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  dir = mkdtempSync(path.join(tmpdir(), 'batchgate-fields-'));
  const config = path.join(dir, 'fields.toml');
  writeFileSync(
    config,
    `[[routes]]\nprefix = "/oracle/"\nupstream = "http://127.0.0.1:${upstream.address().port}"\nfields = true\n`,
  );
  gateway = await startGateway(['--config', config]);
});
after(async () => {
  await gateway?.stop();
  upstream?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('the gateway cuts every case as json-mask does', { skip }, async () => {
  const responses = await batch(
    gateway.url,
    cases.map((c, i) => ({ method: 'GET', url: `/oracle/${i}?fields=${encodeURIComponent(c.mask)}` })),
  );
  for (const [i, c] of cases.entries()) {
    const theirs = JSON.parse(JSON.stringify(mask(structuredClone(c.input), c.mask)));
    assert.deepEqual(theirs, c.expected, `json-mask's answer to ${c.mask} is the recorded one`);
    assert.equal(responses[i].status, 200, `case ${i}: ${c.mask}`);
    assert.deepEqual(await responses[i].json(), theirs, `the gateway on ${c.mask} over ${JSON.stringify(c.input)}`);
  }
});
