// Plugin for the sync mock vendor, in JavaScript (jco componentize): the same
// vendor as plugins/sync-vendor, with vendor id `sync-js`.
//
// `POST {base_url}/v1/lookup` with {"request_id": ..., "data": <the client's
// data>} per job; the vendor's JSON answer is the job's result. Built by
// plugins/build.sh into plugins/dist/sync-js.wasm:
//
//   jco componentize sync-js/app.js --wit ../../wit --world-name vendor-plugin \
//       --disable http fetch-event -o sync-js.wasm
//
// How jco maps the contract: records are objects with camelCase fields,
// variants `{ tag, val }`, enums strings, u64 a BigInt, list<u8> a
// Uint8Array. A `result` import that fails throws an error whose `payload` is
// the error variant; throwing a variant from an export returns it as `err`.

import { httpSend, configGet } from 'vendorhost:plugin/host@0.2.0';

// Where the mock vendor listens unless the operator sets `base_url`.
const DEFAULT_BASE = 'http://127.0.0.1:9001';

// 429 is rate-limited (retried after its Retry-After), other 4xx fail the job
// at once, 5xx and anything unexpected are retried.
function vendorErrorFromStatus(response) {
  let text = new TextDecoder().decode(response.body).trim();
  if (text.length > 200) text = text.slice(0, 200) + '...';
  const message = `HTTP ${response.status}: ${text}`;
  if (response.status === 429) {
    return { tag: 'rate-limited', val: { retryAfterMs: response.retryAfterMs, message } };
  }
  if (response.status >= 400 && response.status <= 499) return { tag: 'bad-request', val: message };
  return { tag: 'server', val: message };
}

// What the host could not deliver, as the vendor error of the same kind.
function vendorErrorFromHttp(error) {
  switch (error.tag) {
    case 'denied': return { tag: 'denied', val: error.val };
    case 'timeout': return { tag: 'timeout', val: 'vendor did not answer in time' };
    case 'connect': return { tag: 'connection', val: error.val };
    case 'invalid-request': return { tag: 'bad-request', val: error.val };
    default: return { tag: 'server', val: 'response too large' };
  }
}

export const vendor = {
  info() {
    return {
      id: 'sync-js',
      displayName: 'Sync mock vendor (JavaScript)',
      mode: 'sync',
      version: '0.1.0',
      hosts: ['127.0.0.1'],
      limits: { ratePerSecond: 50, burst: 20, callTimeoutMs: 5000 },
      config: [
        { name: 'base_url', required: false, secret: false, description: "the vendor's base URL (default http://127.0.0.1:9001)" },
      ],
    };
  },

  fetch(job) {
    try {
      JSON.parse(job.data);
    } catch (e) {
      throw { tag: 'unsupported', val: `data is not JSON: ${e.message}` };
    }
    // The client's JSON is embedded as sent (the host checked it).
    const body = `{"request_id":${JSON.stringify(job.requestId)},"data":${job.data}}`;
    const base = (configGet('base_url') ?? DEFAULT_BASE).replace(/\/+$/, '');
    let response;
    try {
      response = httpSend({
        method: 'POST',
        url: `${base}/v1/lookup`,
        headers: [{ name: 'content-type', value: 'application/json' }],
        body: new TextEncoder().encode(body),
      });
    } catch (e) {
      throw vendorErrorFromHttp(e.payload ?? { tag: 'connect', val: String(e) });
    }
    if (response.status !== 200) throw vendorErrorFromStatus(response);
    let text;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(response.body);
      JSON.parse(text);
    } catch (e) {
      throw { tag: 'server', val: `malformed response: ${e.message}` };
    }
    return { tag: 'complete', val: text };
  },

  onWebhook(_headers, _body) {
    throw { tag: 'unsupported', val: 'sync vendor takes no webhooks' };
  },
};
