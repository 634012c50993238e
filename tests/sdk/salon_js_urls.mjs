// Node driver for tests/functional/test_sdk_several_urls.py: salon.js (unmodified) given
// several server URLs connects to the first that answers, then reconnects to the next when
// its server goes away. Run with `node --experimental-websocket` (Node 20).
// argv: salon.js path, session ID, token, URLs as JSON. Prints one JSON line per step.
const [, , sdkPath, sessionId, token, urlsJson] = process.argv;
const { Session } = await import(sdkPath);
const session = new Session(sessionId, { url: JSON.parse(urlsJson), reconnectTimeout: 20 });
const print = (what) => console.log(JSON.stringify(what));
session.on("sessionReconnected", (e) => {
  print({ step: "reconnected", url: session.url, connectionId: session.connection.connectionId, resumed: e.resumed });
});
session.on("sessionDisconnected", (e) => {
  print({ step: "disconnected", reason: e.reason });
  process.exit(0);
});
await session.connect(token);
print({ step: "connected", url: session.url, urls: session.urls, connectionId: session.connection.connectionId });
process.stdin.on("data", () => session.disconnect());
