// Drives the official `opentok` Node SDK (node_modules/opentok, unmodified) for
// tests/functional/test_sdk_matrix.py.
//
//   node tests/sdk/opentok_node.js '{"apiKey": ..., "secret": ... | "privateKeyFile": ..., "apiUrl": ...,
//                                    "ops": [{"op": "createSession", "args": {...}}, ...]}'
//
// With an application id (a UUID) and a PKCS#8 private key the SDK switches to its Vonage mode
// (Authorization: Bearer RS256 JWTs, RS256 client tokens); with an API key and secret it uses
// X-OPENTOK-AUTH. Prints one JSON line: a result per op, {"ok": value} or {"error": message}.
// An HTTPS server's certificate is trusted through NODE_EXTRA_CA_CERTS.
'use strict';

const fs = require('fs');
const OpenTok = require('opentok');

const request = JSON.parse(process.argv[2]);
const secret = request.privateKeyFile ? fs.readFileSync(request.privateKeyFile, 'utf8') : request.secret;
const ot = new OpenTok(request.apiKey, secret, { apiUrl: request.apiUrl, timeout: 20000 });

function call(fn) {
  return new Promise((resolve) => {
    fn((err, value) => resolve(err ? { error: String(err.message || err) } : { ok: value === undefined ? null : value }));
  });
}

const ops = {
  createSession: (a) => call((cb) => ot.createSession({ mediaMode: a.mediaMode || 'routed' },
    (err, session) => cb(err, session && session.sessionId))),
  generateToken: (a) => {
    try {
      return { ok: ot.generateToken(a.sessionId, { role: a.role, data: a.data, initialLayoutClassList: a.layout }) };
    } catch (err) {
      return { error: String(err.message || err) };
    }
  },
  listStreams: (a) => call((cb) => ot.listStreams(a.sessionId, cb)),
  getStream: (a) => call((cb) => ot.getStream(a.sessionId, a.streamId, cb)),
  signal: (a) => call((cb) => ot.signal(a.sessionId, a.connectionId || null, { type: a.type, data: a.data }, cb)),
  forceDisconnect: (a) => call((cb) => ot.forceDisconnect(a.sessionId, a.connectionId, cb)),
  forceMuteStream: (a) => call((cb) => ot.forceMuteStream(a.sessionId, a.streamId, cb)),
  forceMuteAll: (a) => call((cb) => ot.forceMuteAll(a.sessionId, { excludedStreamIds: a.excluded || [] }, cb)),
  startArchive: (a) => call((cb) => ot.startArchive(a.sessionId, a.options || {}, cb)),
  getArchive: (a) => call((cb) => ot.getArchive(a.archiveId, cb)),
  listArchives: (a) => call((cb) => ot.listArchives(a.options || {},
    (err, archives, count) => cb(err, archives && { items: archives, count }))),
  stopArchive: (a) => call((cb) => ot.stopArchive(a.archiveId, cb)),
  deleteArchive: (a) => call((cb) => ot.deleteArchive(a.archiveId, cb)),
  // The HTTP status of a stream listing with the auth JWT the SDK makes (its AuthError
  // does not tell 401 from 403), sent in the header the SDK would send it in.
  authStatus: async (a) => {
    const jwt = ot.generateJwt();
    const headers = ot.client.c.callVonage ? { Authorization: `Bearer ${jwt}` } : { 'X-OPENTOK-AUTH': jwt };
    const response = await fetch(`${request.apiUrl}/v2/project/${request.apiKey}/session/${a.sessionId}/stream`, { headers });
    return { ok: response.status };
  },
};

(async () => {
  const results = [];
  for (const { op, args } of request.ops) {
    results.push(await ops[op](args || {}));
  }
  process.stdout.write(JSON.stringify({ vonageMode: Boolean(ot.client.c.callVonage), results }) + '\n');
})();
