// Type declarations for batchgate.js.

/** One request of a batch: a `Request`, a URL, or a plain description of one. */
export type BatchRequest =
  | Request
  | string
  | URL
  | {
      /** Default `GET`. */
      method?: string;
      /** A path on the gateway (`/mail/v1/messages/1`, sent in origin-form) or an absolute URL. */
      url: string | URL;
      headers?: HeadersInit;
      /** string, ArrayBuffer, a typed array, Blob, URLSearchParams, FormData or ReadableStream, as for fetch. */
      body?: BodyInit | null;
    };

export interface BatchOptions {
  /** Headers of the batch itself; the gateway applies them to every part (a part's own override them). */
  headers?: HeadersInit;
  /** Aborts the batch: the fetch, and reading its reply. */
  signal?: AbortSignal;
  /** The fetch to send the batch with (default: `globalThis.fetch`). */
  fetch?: typeof fetch;
  /** As for fetch (`'include'` to send cookies to a gateway on another origin). */
  credentials?: RequestCredentials;
  /**
   * The batch's format: `'multipart'` (the default) or `'json'` (Microsoft Graph, OData 4.01). A JSON reply
   * is read whole before its parts are yielded.
   */
  format?: 'multipart' | 'json';
}

/** One embedded response, as soon as its part of the reply is in. */
export interface BatchPart {
  /** The request's position in `requests` (matched by Content-ID, else by order). */
  index: number;
  /** The reply part's `Content-ID` as sent (`<response-3>`), or a JSON response's `id`, or null. */
  contentId: string | null;
  /** Its status, status text, headers and (fully received) body. */
  response: Response;
}

/** A part as `parseReply` yields it: `index` is its position in the reply. */
export interface ReplyPart {
  index: number;
  contentId: string | null;
  response: Response;
}

/**
 * A batch the gateway refused as a whole (any status but 200: 400, 408, 413, 415, 503, ...), or a reply that
 * could not be read as a batch reply (`status` 200 or 0).
 */
export class BatchError extends Error {
  name: 'BatchError';
  /** The batch's HTTP status. */
  status: number;
  /** The gateway's JSON error, `{"error": {"code", "message"}}`'s `error`, if the body was one. */
  error: { code: number; message: string; [key: string]: unknown } | null;
  /** The refused batch's body, as text. */
  body: string;
  constructor(
    message: string,
    details?: { status?: number; error?: BatchError['error']; body?: string; cause?: unknown },
  );
}

/** Sends `requests` as one batch; resolves to one `Response` per request, in request order. */
export function batch(url: string | URL, requests: Iterable<BatchRequest>, options?: BatchOptions): Promise<Response[]>;

/** Sends `requests` as one batch and yields each response as soon as its part of the streamed reply is in. */
export function batchStream(
  url: string | URL,
  requests: Iterable<BatchRequest>,
  options?: BatchOptions,
): AsyncGenerator<BatchPart, void, undefined>;

/**
 * Parses a `multipart/mixed` batch reply body as it streams in, yielding each part once its bytes are
 * complete. `isHead` says which parts answer HEAD requests (their `Content-Length` is not followed by a body).
 */
export function parseReply(
  body: ReadableStream<Uint8Array>,
  boundary: string,
  options?: { isHead?: (contentId: string | null, index: number) => boolean },
): AsyncGenerator<ReplyPart, void, undefined>;

export interface BatcherOptions {
  /** The gateway's batch endpoint, e.g. `https://api.example.com/batch`. */
  url: string | URL;
  /** Calls per batch; a batch is sent at once when this many wait (default 50). */
  maxSize?: number;
  /** Milliseconds a batch waits for more calls after its first; 0 (the default): the calls of the same tick. */
  maxWait?: number;
  /** Headers of every batch (applied by the gateway to every part). */
  headers?: HeadersInit;
  /** The fetch to send batches with (default: `globalThis.fetch`). */
  fetch?: typeof fetch;
  /** As for fetch. */
  credentials?: RequestCredentials;
  /** The batches' format: `'multipart'` (the default) or `'json'`. */
  format?: 'multipart' | 'json';
}

/**
 * A `fetch`-compatible function whose calls are sent in batches. Each call resolves to its own `Response`
 * (also a 4xx/5xx one) as soon as its part arrives; it rejects with the batch's error if the batch fails, and
 * with an AbortError if `init.signal` aborts. Only `method`, `headers`, `body` and `signal` of `init` are used.
 */
export function createBatcher(options: BatcherOptions): (input: RequestInfo | URL, init?: RequestInit) => Promise<Response>;
