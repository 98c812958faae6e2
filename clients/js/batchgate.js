// batchgate-client: send many HTTP requests as one `multipart/mixed` batch to a batchgate gateway and get
// one `Response` per request, each as soon as its part of the streamed reply is in.
//
// No dependencies. Uses only fetch, Request, Response, Headers, TextEncoder/TextDecoder, ReadableStream and
// crypto.getRandomValues, so it runs unchanged in browsers and in Node 20+.
//
// Wire format (the Google APIs batch format; see the gateway's README, "A batch"): each request is an
// `application/http` part with `Content-ID: <i>`; each reply part is `Content-Type: application/http`,
// `Content-ID: <response-i>`, then `HTTP/1.1 <code> <reason>`, headers, a blank line and the body. CRLF
// everywhere.
//
// With `{format: "json"}` the batch is JSON instead (Microsoft Graph, OData 4.01): `{"requests":[{"id":"i",
// "method","url","headers","body"}]}`, answered by `{"responses":[{"id","status","headers","body"}]}`. A body
// is a JSON value for a JSON content type, a string for text/*, base64url otherwise.

const CR = 13;
const LF = 10;
const DASH = 45;

/** Statuses whose `Response` cannot have a body (the Fetch standard's null body statuses). */
const NULL_BODY_STATUSES = new Set([101, 103, 204, 205, 304]);

/** Methods that fetch normalises to upper case (plus PATCH, which it should). */
const NORMALISED_METHODS = new Set(['DELETE', 'GET', 'HEAD', 'OPTIONS', 'PATCH', 'POST', 'PUT']);

/** Methods that usually carry a body: they get `Content-Length: 0` when they have none. */
const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH']);

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

const BOUNDARY_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

/** A batch the gateway refused as a whole (any status but 200), or a reply that is not a batch reply. */
export class BatchError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, error?: object|null, body?: string, cause?: unknown}} [details]
   */
  constructor(message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'BatchError';
    /** The batch's HTTP status (0 when the reply was unreadable rather than refused). */
    this.status = details.status ?? 0;
    /** The gateway's `error` object, `{code, message}`, when its body was its JSON error. */
    this.error = details.error ?? null;
    /** The raw body of the refused batch, as text. */
    this.body = details.body ?? '';
  }
}

// ---------------------------------------------------------------------------------------------------------
// Bytes

/** A string of byte-valued characters (header text, ASCII targets) as bytes, one byte per character. */
function latin1Bytes(text) {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i) & 0xff;
  return out;
}

/** Bytes as one character per byte (how header bytes become `Headers` values). */
function latin1Text(bytes, from = 0, to = bytes.length) {
  let text = '';
  for (let i = from; i < to; i += 8192) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, Math.min(to, i + 8192)));
  }
  return text;
}

/** First index of `pattern` in `bytes[from, to)` (the whole pattern inside), or -1. */
function indexOfBytes(bytes, pattern, from, to) {
  const first = pattern[0];
  const last = to - pattern.length;
  for (let i = bytes.indexOf(first, from); i !== -1 && i <= last; i = bytes.indexOf(first, i + 1)) {
    let j = 1;
    while (j < pattern.length && bytes[i + j] === pattern[j]) j++;
    if (j === pattern.length) return i;
  }
  return -1;
}

function randomBoundary() {
  const random = new Uint8Array(32);
  globalThis.crypto.getRandomValues(random);
  let boundary = 'batchgate_';
  for (const byte of random) boundary += BOUNDARY_ALPHABET[byte % BOUNDARY_ALPHABET.length];
  return boundary;
}

/** The boundary parameter of a `multipart/mixed` content type, or null. */
function boundaryOf(contentType) {
  if (!contentType) return null;
  const [type, ...params] = contentType.split(';');
  if (type.trim().toLowerCase() !== 'multipart/mixed') return null;
  for (const param of params) {
    const eq = param.indexOf('=');
    if (eq < 0 || param.slice(0, eq).trim().toLowerCase() !== 'boundary') continue;
    let value = param.slice(eq + 1).trim();
    if (value.startsWith('"') && value.endsWith('"') && value.length >= 2) value = value.slice(1, -1);
    return value || null;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------------------
// Requests

/** The page's (or worker's) location, if there is one. */
function pageLocation() {
  try {
    return globalThis.location?.href === undefined ? undefined : globalThis.location;
  } catch {
    return undefined; // runtimes where reading `location` throws when none was set
  }
}

function resolveBatchUrl(url) {
  const base = pageLocation()?.href;
  try {
    return base === undefined ? new URL(url) : new URL(url, base);
  } catch {
    throw new TypeError(`batchgate: batch URL ${String(url)} is not absolute (outside a browser it must be)`);
  }
}

/**
 * One request as the encoder needs it: method, the target as it goes on the request line (origin-form when
 * the URL is on the gateway's origin or the page's, absolute-form otherwise), header pairs, body bytes.
 */
async function prepareRequest(input, batchUrl) {
  let method;
  let url;
  let headers;
  let body = null;
  let bodyType = null;
  if (typeof Request !== 'undefined' && input instanceof Request) {
    method = input.method;
    url = input.url;
    headers = new Headers(input.headers);
    if (input.body !== null) body = new Uint8Array(await input.arrayBuffer());
  } else if (input && typeof input === 'object' && !(input instanceof URL)) {
    method = input.method ?? 'GET';
    url = input.url;
    headers = new Headers(input.headers ?? undefined);
    if (input.body !== undefined && input.body !== null) {
      if (input.body instanceof Uint8Array) {
        body = input.body;
      } else if (input.body instanceof ArrayBuffer) {
        body = new Uint8Array(input.body);
      } else if (ArrayBuffer.isView(input.body)) {
        body = new Uint8Array(input.body.buffer, input.body.byteOffset, input.body.byteLength);
      } else {
        // string, Blob, URLSearchParams, FormData, ReadableStream: as fetch would extract them.
        const extracted = new Response(input.body);
        bodyType = extracted.headers.get('content-type');
        body = new Uint8Array(await extracted.arrayBuffer());
      }
    }
  } else if (typeof input === 'string' || input instanceof URL) {
    method = 'GET';
    url = String(input);
    headers = new Headers();
  } else {
    throw new TypeError('batchgate: a request is a Request, a URL or {method, url, headers, body}');
  }
  if (url === undefined || url === null || url === '') throw new TypeError('batchgate: a request has no url');
  method = String(method);
  if (NORMALISED_METHODS.has(method.toUpperCase())) method = method.toUpperCase();
  if (!TOKEN.test(method)) throw new TypeError(`batchgate: ${JSON.stringify(method)} is not an HTTP method`);

  const target = new URL(String(url), batchUrl);
  const page = pageLocation()?.origin;
  const local = target.origin === batchUrl.origin || (page !== undefined && target.origin === page);
  target.hash = '';
  const requestTarget = local ? target.pathname + target.search : target.href;

  if (bodyType !== null && !headers.has('content-type')) headers.set('content-type', bodyType);
  // The length is ours to state; a Transfer-Encoding inside a part is refused by the gateway as smuggling.
  headers.delete('content-length');
  headers.delete('transfer-encoding');
  if (body === null && BODY_METHODS.has(method)) body = new Uint8Array(0);
  return { method, target: requestTarget, headers: [...headers], body };
}

/** The multipart body: one `application/http` part per request, `Content-ID: <i>`. */
function encodeBatch(prepared, boundary) {
  const chunks = [];
  let size = 0;
  const add = (bytes) => {
    chunks.push(bytes);
    size += bytes.length;
  };
  prepared.forEach((request, i) => {
    let head = `--${boundary}\r\nContent-Type: application/http\r\nContent-ID: <${i}>\r\n\r\n`;
    head += `${request.method} ${request.target} HTTP/1.1\r\n`;
    for (const [name, value] of request.headers) head += `${name}: ${value}\r\n`;
    if (request.body !== null) head += `Content-Length: ${request.body.length}\r\n`;
    head += '\r\n';
    add(latin1Bytes(head));
    if (request.body !== null) add(request.body);
    add(latin1Bytes('\r\n'));
  });
  add(latin1Bytes(`--${boundary}--\r\n`));
  const body = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    body.set(chunk, at);
    at += chunk.length;
  }
  return body;
}

/** A boundary that occurs in no body (with 190 random bits it never does by chance; this makes it certain). */
function boundaryFor(prepared) {
  for (;;) {
    const boundary = randomBoundary();
    const pattern = latin1Bytes(boundary);
    if (!prepared.some((r) => r.body !== null && indexOfBytes(r.body, pattern, 0, r.body.length) !== -1)) {
      return boundary;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// JSON batches

/** How a body is written in a JSON batch, by its content type: 'json', 'text' or 'base64'. */
function bodyEncoding(contentType) {
  const essence = (contentType ?? '').split(';')[0].trim().toLowerCase();
  if (essence === 'application/json' || essence.endsWith('+json')) return 'json';
  if (essence.startsWith('text/')) return 'text';
  return 'base64';
}

function base64url(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** base64url or standard base64, padded or not; null if it is neither. */
function fromBase64(text) {
  const standard = text.replace(/-/g, '+').replace(/_/g, '/').replace(/=+$/, '');
  let binary;
  try {
    binary = atob(standard + '='.repeat((4 - (standard.length % 4)) % 4));
  } catch {
    return null;
  }
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** The JSON text of `bytes` if they are one JSON value, else null. */
function jsonText(bytes) {
  try {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    JSON.parse(text);
    return text;
  } catch {
    return null;
  }
}

/** The JSON batch body: one element of `requests` per request, with the id `i` (its position). */
function encodeJsonBatch(prepared) {
  const elements = prepared.map((request, i) => {
    const headers = Object.fromEntries(request.headers);
    let body = '';
    if (request.body !== null && request.body.length > 0) {
      const type = headers['content-type'];
      const encoding = type === undefined ? 'json' : bodyEncoding(type);
      const json = encoding === 'json' ? jsonText(request.body) : null;
      let text = null;
      if (encoding === 'text') {
        try {
          text = new TextDecoder('utf-8', { fatal: true }).decode(request.body);
        } catch {
          // Not UTF-8: it goes as bytes.
        }
      }
      if (json !== null) {
        if (type === undefined) headers['content-type'] = 'application/json';
        body = `,"body":${json}`;
      } else if (text !== null) {
        body = `,"body":${JSON.stringify(text)}`;
      } else {
        // Bytes its declared type cannot carry in JSON go as base64url, and say they are bytes.
        if (type === undefined || bodyEncoding(type) !== 'base64') headers['content-type'] = 'application/octet-stream';
        body = `,"body":"${base64url(request.body)}"`;
      }
    }
    const head = `{"id":"${i}","method":${JSON.stringify(request.method)},"url":${JSON.stringify(request.target)}`;
    const names = Object.keys(headers).length > 0 ? `,"headers":${JSON.stringify(headers)}` : '';
    return `${head}${names}${body}}`;
  });
  return new TextEncoder().encode(`{"requests":[${elements.join(',')}]}`);
}

/**
 * A whole JSON batch reply, as `{index, contentId, response}` per response in reply order: `index` from its
 * id (the request's position), `contentId` the id.
 */
function parseJsonReply(text, count) {
  let reply;
  try {
    reply = JSON.parse(text);
  } catch (cause) {
    throw new BatchError(`batchgate: the JSON reply does not parse: ${cause.message}`, { status: 200 });
  }
  if (!reply || !Array.isArray(reply.responses)) {
    throw new BatchError('batchgate: the JSON reply has no "responses" array', { status: 200 });
  }
  return reply.responses.map((element, position) => {
    const id = element?.id === undefined || element?.id === null ? null : String(element.id);
    const index = id !== null && /^\d+$/.test(id) && Number(id) < count ? Number(id) : position;
    const headers = new Headers();
    for (const [name, value] of Object.entries(element.headers ?? {})) {
      try {
        headers.append(name, String(value));
      } catch {
        // A header the platform refuses to represent: left out, as fetch would.
      }
    }
    let payload = null;
    if (element.body !== undefined && element.body !== null) {
      const encoding = bodyEncoding(headers.get('content-type'));
      if (encoding === 'json' || typeof element.body !== 'string') payload = JSON.stringify(element.body);
      else if (encoding === 'text') payload = element.body;
      else payload = fromBase64(element.body) ?? element.body;
    }
    const status = Number(element.status);
    try {
      const response = new Response(NULL_BODY_STATUSES.has(status) ? null : payload, { status, headers });
      return { index, contentId: id, response };
    } catch (cause) {
      throw malformed(position, `cannot represent HTTP ${element.status} as a Response: ${cause.message}`);
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// The streaming reply parser

/** A growable byte queue; offsets are relative to its first unconsumed byte. */
class ByteQueue {
  constructor() {
    this.buf = new Uint8Array(16384);
    this.start = 0;
    this.end = 0;
  }

  get length() {
    return this.end - this.start;
  }

  push(chunk) {
    if (this.end + chunk.length > this.buf.length) {
      const live = this.end - this.start;
      if (live + chunk.length <= this.buf.length / 2) {
        this.buf.copyWithin(0, this.start, this.end);
      } else {
        const bigger = new Uint8Array(Math.max(this.buf.length * 2, live + chunk.length));
        bigger.set(this.buf.subarray(this.start, this.end), 0);
        this.buf = bigger;
      }
      this.start = 0;
      this.end = live;
    }
    this.buf.set(chunk, this.end);
    this.end += chunk.length;
  }

  at(i) {
    return this.buf[this.start + i];
  }

  /** Offset of `pattern` wholly inside [from, length), or -1. */
  indexOf(pattern, from) {
    const at = indexOfBytes(this.buf, pattern, this.start + from, this.end);
    return at === -1 ? -1 : at - this.start;
  }

  /** Offset of the next LF at or after `from`, or -1. */
  indexOfLf(from) {
    const at = this.buf.subarray(0, this.end).indexOf(LF, this.start + from);
    return at === -1 ? -1 : at - this.start;
  }

  text(from, to) {
    return latin1Text(this.buf, this.start + from, this.start + to);
  }

  copy(from, to) {
    return this.buf.slice(this.start + from, this.start + to);
  }

  skip(n) {
    this.start += n;
    if (this.start === this.end) this.start = this.end = 0;
  }
}

/**
 * Reads one header block starting at `from`: lines up to an empty one (CRLF or LF endings; folded lines
 * joined). Returns `{lines, end}` with `end` just past the empty line, or null when it is not all in yet.
 */
function readHeaderBlock(queue, from) {
  const lines = [];
  let at = from;
  for (;;) {
    const lf = queue.indexOfLf(at);
    if (lf === -1) return null;
    const lineEnd = lf > at && queue.at(lf - 1) === CR ? lf - 1 : lf;
    const line = queue.text(at, lineEnd);
    at = lf + 1;
    if (line === '') return { lines, end: at };
    if ((line[0] === ' ' || line[0] === '\t') && lines.length > 0) {
      lines[lines.length - 1] += ' ' + line.trim();
    } else {
      lines.push(line);
    }
  }
}

function headerPairs(lines) {
  const pairs = [];
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    pairs.push([line.slice(0, colon).trim(), line.slice(colon + 1).trim()]);
  }
  return pairs;
}

function malformed(position, reason) {
  return new BatchError(`batchgate: reply part ${position}: ${reason}`, { status: 200 });
}

function makeResponse(part, body) {
  const headers = new Headers();
  for (const [name, value] of part.headers) {
    try {
      headers.append(name, value);
    } catch {
      // A header the platform refuses to represent (not a valid name or value): left out, as fetch would.
    }
  }
  const init = { status: part.status, statusText: part.statusText, headers };
  const payload = NULL_BODY_STATUSES.has(part.status) ? null : body;
  try {
    return new Response(payload, init);
  } catch (cause) {
    throw malformed(part.position, `cannot represent HTTP ${part.status} as a Response: ${cause.message}`);
  }
}

/**
 * Parses a `multipart/mixed` batch reply as it streams in and yields each part as soon as its bytes are
 * complete: `{index, contentId, response}`, `index` being the part's position in the reply and `contentId`
 * its `Content-ID` header as sent (e.g. `<response-3>`), or null.
 *
 * A body is as long as its `Content-Length` says, so a part is yielded without waiting for the next
 * delimiter; without one it runs to the next delimiter. A HEAD or 304 answer keeps its upstream's
 * `Content-Length` and has no body: 1xx, 204 and 304 are known to be bodyless, and `options.isHead(contentId,
 * index)` says which parts answer HEAD requests (otherwise the delimiter right after the head says so).
 *
 * @param {ReadableStream<Uint8Array>} stream
 * @param {string} boundary
 * @param {{isHead?: (contentId: string|null, index: number) => boolean}} [options]
 */
export async function* parseReply(stream, boundary, options = {}) {
  if (!boundary) throw new TypeError('batchgate: parseReply needs the reply boundary');
  const isHead = options.isHead ?? (() => false);
  const dashBoundary = latin1Bytes(`--${boundary}`);
  const lfDelimiter = latin1Bytes(`\n--${boundary}`);
  const queue = new ByteQueue();
  const reader = stream.getReader();
  let eof = false;
  let finished = false;
  let position = 0;
  // 'seek': looking for the next delimiter line; 'head': a part's headers; 'body': its body.
  let state = 'seek';
  let first = true;
  let seekFrom = 0;
  let part = null;
  let scanned = 0;

  /**
   * Whether the delimiter whose `--` is at `d` is one: 'close', 'part' (then `lineEnd` is past its line),
   * 'no' (a longer boundary), or 'more' (its end is not in yet).
   */
  const delimiterAt = (d) => {
    const more = { kind: eof ? 'no' : 'more' };
    let k = d + dashBoundary.length;
    if (queue.length <= k) return more;
    if (queue.at(k) === DASH) {
      if (queue.length <= k + 1) return more;
      return { kind: queue.at(k + 1) === DASH ? 'close' : 'no' };
    }
    while (k < queue.length && (queue.at(k) === 0x20 || queue.at(k) === 0x09)) k++;
    if (k >= queue.length) return more;
    if (queue.at(k) === LF) return { kind: 'part', lineEnd: k + 1 };
    if (queue.at(k) !== CR) return { kind: 'no' };
    if (k + 1 >= queue.length) return more;
    return queue.at(k + 1) === LF ? { kind: 'part', lineEnd: k + 2 } : { kind: 'no' };
  };

  /** The next part, if its bytes are all in; advances the state machine as far as the bytes allow. */
  const step = () => {
    for (;;) {
      if (state === 'seek') {
        let d = -1;
        if (first && seekFrom === 0 && queue.length >= dashBoundary.length) {
          if (queue.indexOf(dashBoundary, 0) === 0) d = 0;
        }
        if (d === -1) {
          const lf = queue.indexOf(lfDelimiter, seekFrom);
          if (lf === -1) {
            seekFrom = Math.max(seekFrom, queue.length - lfDelimiter.length + 1);
            return null;
          }
          d = lf + 1;
        }
        const found = delimiterAt(d);
        if (found.kind === 'more') return null;
        if (found.kind === 'no') {
          seekFrom = d + 1;
          continue;
        }
        first = false;
        if (found.kind === 'close') {
          finished = true;
          return null;
        }
        queue.skip(found.lineEnd);
        seekFrom = 0;
        state = 'head';
      }

      if (state === 'head') {
        let mime = readHeaderBlock(queue, 0);
        if (mime === null) return null;
        let http;
        if (/^HTTP\//.test(mime.lines[0] ?? '')) {
          // No part headers at all: the block just read is the embedded response's head.
          http = mime;
          mime = { lines: [], end: 0 };
        } else {
          http = readHeaderBlock(queue, mime.end);
          if (http === null) return null;
        }
        const contentId =
          headerPairs(mime.lines).find(([name]) => name.toLowerCase() === 'content-id')?.[1] ?? null;
        const statusLine = http.lines[0] ?? '';
        const match = /^HTTP\/\d(?:\.\d)?[ \t]+(\d{3})(?:[ \t]+(.*))?$/.exec(statusLine);
        if (!match) throw malformed(position, `bad status line ${JSON.stringify(statusLine)}`);
        const status = Number(match[1]);
        const headers = headerPairs(http.lines.slice(1));
        const lengthHeader = headers.find(([name]) => name.toLowerCase() === 'content-length')?.[1];
        let length = lengthHeader !== undefined && /^\d+$/.test(lengthHeader) ? Number(lengthHeader) : null;
        if ((status >= 100 && status < 200) || status === 204 || status === 304 || isHead(contentId, position)) {
          length = 0;
        }
        part = { position, contentId, status, statusText: match[2] ?? '', headers, length };
        queue.skip(http.end);
        scanned = 0;
        state = 'body';
      }

      // state === 'body': the part's body starts at offset 0.
      let end = -1;
      // Where the body really ends if a delimiter comes first: a HEAD answer's kept Content-Length, or no
      // length at all. The random boundary occurs in no body, so a delimiter always ends one.
      const limit = part.length === null ? queue.length : Math.min(queue.length, part.length + 1);
      while (scanned < limit) {
        const lf = queue.indexOf(lfDelimiter, scanned);
        if (lf === -1 || lf >= limit) {
          scanned = Math.max(scanned, Math.min(limit, queue.length - lfDelimiter.length + 1));
          break;
        }
        const found = delimiterAt(lf + 1);
        if (found.kind === 'more') return null;
        if (found.kind === 'no') {
          scanned = lf + 1;
          continue;
        }
        end = lf > 0 && queue.at(lf - 1) === CR ? lf - 1 : lf;
        break;
      }
      if (end === -1 && part.length !== null) {
        const n = part.length;
        // The CRLF that ends a body is written with it, so the part is complete without waiting for the next
        // delimiter (an LF-only reply's parts end at their delimiters, found by the scan above).
        if (n === 0) {
          end = 0;
        } else if (queue.length > n + 1 && queue.at(n) === CR && queue.at(n + 1) === LF) {
          end = n;
        } else if (queue.length > n + 1 && queue.at(n) !== LF) {
          throw malformed(position, `no line break after its ${n}-byte body`);
        }
      }
      if (end === -1) {
        if (eof) throw malformed(position, 'the reply ended inside it');
        return null;
      }
      if (part.length !== null && end !== part.length && end !== 0) {
        throw malformed(position, `Content-Length ${part.length} but ${end} bytes`);
      }
      const body = queue.copy(0, end);
      queue.skip(end);
      const done = part;
      part = null;
      state = 'seek';
      seekFrom = 0;
      position++;
      return { index: done.position, contentId: done.contentId, response: makeResponse(done, body) };
    }
  };

  try {
    for (;;) {
      const next = step();
      if (next !== null) {
        yield next;
        continue;
      }
      if (finished) return;
      if (eof) {
        throw new BatchError('batchgate: the batch reply ended before its closing delimiter', { status: 200 });
      }
      const { done, value } = await reader.read();
      if (done) eof = true;
      else if (value && value.length > 0) queue.push(value);
    }
  } finally {
    // Past the close delimiter only an epilogue is left; an early exit (break, error) stops the download.
    reader.cancel().catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------------------
// Batches

async function refusal(response) {
  let body = '';
  try {
    body = await response.text();
  } catch {
    // The body of a refused batch is informative only.
  }
  let error = null;
  try {
    const parsed = JSON.parse(body);
    if (parsed && typeof parsed === 'object' && parsed.error && typeof parsed.error === 'object') {
      error = parsed.error;
    }
  } catch {
    // Not the gateway's JSON (a proxy's page, say): the raw body is kept.
  }
  const reason = error?.message ?? (body.slice(0, 200) || response.statusText);
  return new BatchError(`batch refused: HTTP ${response.status}${reason ? `: ${reason}` : ''}`, {
    status: response.status,
    error,
    body,
  });
}

/**
 * The batch of already prepared requests: POSTs it and yields `{index, contentId, response}` per reply part as
 * it arrives.
 */
async function* streamBatch(url, prepared, options) {
  const format = options.format ?? 'multipart';
  if (format !== 'multipart' && format !== 'json') {
    throw new TypeError(`batchgate: format is "multipart" or "json", not ${JSON.stringify(format)}`);
  }
  const headers = new Headers(options.headers ?? undefined);
  headers.delete('content-length');
  let body;
  if (format === 'json') {
    headers.set('content-type', 'application/json');
    body = encodeJsonBatch(prepared);
  } else {
    const boundary = boundaryFor(prepared);
    headers.set('content-type', `multipart/mixed; boundary=${boundary}`);
    body = encodeBatch(prepared, boundary);
  }
  const init = { method: 'POST', headers, body };
  if (options.signal) init.signal = options.signal;
  if (options.credentials) init.credentials = options.credentials;
  const doFetch = options.fetch ?? globalThis.fetch;
  const response = await doFetch(url, init);
  if (response.status !== 200) throw await refusal(response);
  const contentType = response.headers.get('content-type');
  if (format === 'json') {
    // A JSON reply is one document: its parts come once it is whole.
    if (bodyEncoding(contentType) !== 'json') {
      response.body?.cancel().catch(() => {});
      throw new BatchError(`batchgate: a 200 reply to a JSON batch that is not JSON (${contentType})`, { status: 200 });
    }
    const parts = parseJsonReply(await response.text(), prepared.length);
    const seen = new Set(parts.map((part) => part.index));
    if (parts.length !== prepared.length || seen.size !== prepared.length) {
      throw new BatchError(`batchgate: the reply has ${parts.length} responses for ${prepared.length} requests`, {
        status: 200,
      });
    }
    yield* parts;
    return;
  }
  const replyBoundary = boundaryOf(contentType);
  if (replyBoundary === null || response.body === null) {
    response.body?.cancel().catch(() => {});
    throw new BatchError(`batchgate: a 200 reply that is not multipart/mixed with a boundary (${contentType})`, {
      status: 200,
    });
  }

  const answered = new Array(prepared.length).fill(false);
  let next = 0;
  /**
   * The request a reply part answers: by its Content-ID, else the reply's position, else the first open. A
   * Content-ID naming a request already answered is malformed (as in the Rust client): taking it by position
   * instead would hand one caller's response to another.
   */
  const indexFor = (contentId, position) => {
    const match = contentId === null ? null : /^<?response-(\d+)>?$/.exec(contentId.trim());
    if (match) {
      const i = Number(match[1]);
      if (i < prepared.length) {
        if (answered[i]) {
          const why = `Content-ID ${contentId} answers request ${i}, which an earlier reply part already answered`;
          throw malformed(position, why);
        }
        return i;
      }
    }
    if (position < prepared.length && !answered[position]) return position;
    while (next < prepared.length && answered[next]) next++;
    return next < prepared.length ? next : -1;
  };
  const isHead = (contentId, position) => {
    const i = indexFor(contentId, position);
    return i !== -1 && prepared[i].method === 'HEAD';
  };

  let count = 0;
  for await (const part of parseReply(response.body, replyBoundary, { isHead })) {
    const index = indexFor(part.contentId, part.index);
    if (index === -1) {
      throw new BatchError(`batchgate: the reply has more parts than the ${prepared.length} requests`, {
        status: 200,
      });
    }
    answered[index] = true;
    count++;
    yield { index, contentId: part.contentId, response: part.response };
  }
  if (count < prepared.length) {
    throw new BatchError(`batchgate: the reply has ${count} parts for ${prepared.length} requests`, {
      status: 200,
    });
  }
}

/**
 * Sends `requests` as one batch and yields each embedded response as soon as its part of the reply is in:
 * `{index, contentId, response}` in arrival order, `index` being the request's position in `requests`
 * (matched by Content-ID, else by order) and `contentId` the reply part's `Content-ID` (`<response-i>`).
 */
export async function* batchStream(url, requests, options = {}) {
  const list = Array.from(requests);
  if (list.length === 0) return;
  const batchUrl = resolveBatchUrl(url);
  const prepared = await Promise.all(list.map((request) => prepareRequest(request, batchUrl)));
  yield* streamBatch(url, prepared, options);
}

/** Sends `requests` as one batch; resolves to their `Response`s in request order. */
export async function batch(url, requests, options = {}) {
  const list = Array.from(requests);
  const responses = new Array(list.length);
  for await (const { index, response } of batchStream(url, list, options)) responses[index] = response;
  return responses;
}

// ---------------------------------------------------------------------------------------------------------
// The batcher

function abortReason(signal) {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

/**
 * A `fetch`-compatible function whose calls are sent in batches: the calls made in the same tick (`maxWait`
 * 0) or within `maxWait` ms of the first one share one batch, sent at once when `maxSize` are waiting. Each
 * call resolves to its own `Response` as soon as its part of the reply is in.
 */
export function createBatcher(options) {
  const { url, maxSize = 50, maxWait = 0, headers, fetch: doFetch, credentials, format } = options ?? {};
  if (url === undefined || url === null) throw new TypeError('batchgate: createBatcher needs {url}');
  if (!Number.isInteger(maxSize) || maxSize < 1) {
    throw new RangeError('batchgate: maxSize must be an integer of at least 1');
  }
  if (typeof maxWait !== 'number' || !(maxWait >= 0) || maxWait === Infinity) {
    throw new RangeError('batchgate: maxWait must be a finite number of milliseconds, 0 or more');
  }
  const batchUrl = resolveBatchUrl(url);

  let queue = [];
  let scheduled = null; // how to cancel the pending flush

  const flush = () => {
    scheduled?.();
    scheduled = null;
    const callers = queue.filter((caller) => !caller.settled);
    queue = [];
    if (callers.length > 0) send(callers);
  };

  const schedule = () => {
    if (scheduled !== null) return;
    if (maxWait > 0) {
      const timer = setTimeout(flush, maxWait);
      scheduled = () => clearTimeout(timer);
    } else {
      // Same tick: every call made before the current task yields to the microtask queue.
      let cancelled = false;
      scheduled = () => (cancelled = true);
      queueMicrotask(() => {
        if (!cancelled) flush();
      });
    }
  };

  const send = async (callers) => {
    const batch = { controller: new AbortController(), callers: [] };
    for (const caller of callers) caller.batch = batch;
    // A request that cannot be encoded (a bad method, an unreadable body) fails its own call only.
    const prepared = await Promise.allSettled(callers.map((caller) => caller.prepared));
    prepared.forEach((result, i) => {
      if (result.status === 'rejected') callers[i].settle(false, result.reason);
    });
    const sending = [];
    const requests = [];
    prepared.forEach((result, i) => {
      if (result.status === 'fulfilled' && !callers[i].settled) {
        sending.push(callers[i]);
        requests.push(result.value);
      }
    });
    batch.callers = sending;
    if (sending.length === 0) return;
    try {
      const stream = streamBatch(url, requests, {
        headers,
        fetch: doFetch,
        credentials,
        format,
        signal: batch.controller.signal,
      });
      for await (const { index, response } of stream) {
        const caller = sending[index];
        if (caller.settled) response.body?.cancel().catch(() => {});
        else caller.settle(true, response);
      }
    } catch (error) {
      for (const caller of sending) if (!caller.settled) caller.settle(false, error);
    }
  };

  return function batchedFetch(input, init = undefined) {
    return new Promise((resolve, reject) => {
      const isRequest = typeof Request !== 'undefined' && input instanceof Request;
      const signal = init?.signal ?? (isRequest ? input.signal : null);
      if (signal?.aborted) {
        reject(abortReason(signal));
        return;
      }
      let request;
      try {
        request = isRequest
          ? init === undefined
            ? input
            : new Request(input, init)
          : { method: init?.method ?? 'GET', url: String(input), headers: init?.headers, body: init?.body };
      } catch (error) {
        reject(error);
        return;
      }
      const caller = { prepared: prepareRequest(request, batchUrl), settled: false, batch: null, settle: null };
      caller.prepared.catch(() => {}); // handled when the batch is sent
      const onAbort = () => {
        if (caller.settled) return;
        const reason = abortReason(signal);
        caller.settle(false, reason);
        if (caller.batch === null) {
          // Not sent yet: it leaves the batch.
          queue = queue.filter((other) => other !== caller);
          if (queue.length === 0) {
            scheduled?.();
            scheduled = null;
          }
        } else if (caller.batch.callers.length > 0 && caller.batch.callers.every((other) => other.settled)) {
          // Sent, and every caller of that batch has given up: stop it.
          caller.batch.controller.abort(reason);
        }
      };
      caller.settle = (ok, value) => {
        caller.settled = true;
        signal?.removeEventListener('abort', onAbort);
        if (ok) resolve(value);
        else reject(value);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      queue.push(caller);
      if (queue.length >= maxSize) flush();
      else schedule();
    });
  };
}
