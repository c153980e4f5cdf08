// keepalive.js: an HTTP/1.1 load client that never retries, on Node's own http client.
//
//   node keepalive.js URL CONNECTIONS [REQUESTS]
//
// CONNECTIONS keep-alive connections (one http.Agent with keepAlive), each sending its next
// request as soon as the previous answer has arrived. It stops after REQUESTS answers in all, or,
// without REQUESTS, when its stdin closes; then it waits for the requests in flight and prints one
// JSON line: {"ok": N, "errors": N, "statuses": {"503": N}, "samples": ["TIME ECONNRESET ...", ...]}.
// A request that fails (a connection closed under it, a response Node cannot parse) is counted,
// never sent again: Node's http client does not retry, which is the point.
"use strict";
const http = require("http");

const [url, connArg, requestArg] = process.argv.slice(2);
const connections = parseInt(connArg || "8", 10);
const limit = requestArg ? parseInt(requestArg, 10) : Infinity;
const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
const result = { ok: 0, errors: 0, statuses: {}, samples: [] };
let started = 0;
let inFlight = 0;
let stopping = false;
let printed = false;

function finish() {
  if (printed) return;
  printed = true;
  process.stdout.write(JSON.stringify(result) + "\n");
  agent.destroy();
  process.exit(0);
}

function failed(what) {
  result.errors++;
  if (result.samples.length < 10) result.samples.push(`${new Date().toISOString()} ${what}`);
}

function next() {
  if (stopping || started >= limit) {
    if (inFlight === 0) finish();
    return;
  }
  started++;
  inFlight++;
  let done = false;
  const end = (err, status) => {
    if (done) return;
    done = true;
    inFlight--;
    if (err) failed(err);
    else if (status === 200) result.ok++;
    else result.statuses[status] = (result.statuses[status] || 0) + 1;
    setImmediate(next);
  };
  let sock = null;
  // Which connection failed (its local port), and whether it had served requests before.
  const where = () => `(port ${(sock && sock.localPort) || "?"}${req.reusedSocket ? ", reused" : ""})`;
  const req = http.get(url, { agent }, (res) => {
    res.on("data", () => {});
    res.on("end", () => end(null, res.statusCode));
    res.on("error", (e) => end(`${e.code || ""} ${e.message} ${where()}`));
  });
  req.on("socket", (s) => { sock = s; });
  req.setTimeout(30000, () => req.destroy(new Error("no answer in 30s")));
  req.on("error", (e) => end(`${e.code || ""} ${e.message} ${where()}`));
}

if (limit === Infinity) {
  process.stdin.on("end", () => {
    stopping = true;
    if (inFlight === 0) finish();
    setTimeout(finish, 30000).unref();
  });
  process.stdin.resume();
}
for (let i = 0; i < connections; i++) next();
