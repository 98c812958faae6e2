// Starts a real gateway for a test file: `target/debug/batchgate --demo --listen 127.0.0.1:0 --print-address`
// (built with `cargo build --bin batchgate` first if it is missing), its address read from its stdout.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = fileURLToPath(new URL('../../../', import.meta.url));

function binary() {
  if (process.env.BATCHGATE_BIN) return process.env.BATCHGATE_BIN;
  const targetDir = process.env.CARGO_TARGET_DIR
    ? path.resolve(root, process.env.CARGO_TARGET_DIR)
    : path.join(root, 'target');
  const bin = path.join(targetDir, 'debug', process.platform === 'win32' ? 'batchgate.exe' : 'batchgate');
  if (!existsSync(bin)) {
    // Test files run in parallel processes; cargo's own lock makes concurrent builds wait for each other.
    const build = spawnSync('cargo', ['build', '--bin', 'batchgate'], {
      cwd: root,
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    if (build.status !== 0) throw new Error(`cargo build --bin batchgate failed (${build.error ?? build.status})`);
  }
  return bin;
}

/**
 * Spawns the demo gateway with `--print-address`, which writes its base URL (`http://127.0.0.1:PORT`) as the
 * one line on stdout once it listens, and exits non-zero before that if it cannot. Resolves to
 * `{url, origin, log, stop}`: `url` is its batch endpoint (the base URL plus the default `batch_path`, `/batch`),
 * `log()` its stderr so far, `stop()` sends SIGTERM and waits for it to exit.
 */
export async function startGateway(args = []) {
  const child = spawn(binary(), ['--demo', '--listen', '127.0.0.1:0', '--print-address', ...args], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1' },
  });
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const exited = new Promise((resolve) => child.once('exit', resolve));
  let log = '';
  child.stderr.setEncoding('utf8');
  // Read the log for as long as the gateway runs, so that it never blocks on a full pipe.
  child.stderr.on('data', (chunk) => {
    log += chunk;
  });
  const origin = await new Promise((resolve, reject) => {
    let stdout = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      const end = stdout.indexOf('\n');
      if (end >= 0) resolve(stdout.slice(0, end));
    });
    child.once('error', reject);
    // 'close' comes after the last of stderr, so the rejection carries the whole log.
    child.once('close', (code) => reject(new Error(`batchgate exited (${code}) before listening:\n${log}`)));
  });
  return {
    url: `${origin}/batch`,
    origin,
    log: () => log,
    async stop() {
      process.removeListener('exit', killOnExit);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/** A `fetch` that counts its calls and keeps each batch body it sent, for assertions. */
export function countingFetch(inner = globalThis.fetch) {
  const calls = [];
  const wrapped = (input, init) => {
    calls.push({ input, init, parts: partsIn(init?.body) });
    return inner(input, init);
  };
  wrapped.calls = calls;
  return wrapped;
}

/** Number of parts in an encoded batch body (its `Content-ID` lines). */
function partsIn(body) {
  if (!(body instanceof Uint8Array)) return null;
  return (new TextDecoder('latin1').decode(body).match(/^Content-ID: /gm) ?? []).length;
}
