// What the end-to-end drivers in clients/*/run.mjs share: checks, deadlines, child processes
// that announce readiness with a line of output, the gateway binary as one of them (on
// 127.0.0.1 port 0 everywhere), and an in-memory OAuth client for the MCP TypeScript SDK with
// its loopback redirect URI. No dependencies (the OAuth client is duck-typed, not built on the
// SDK), so each driver's own package imports it by relative path.
//
// Deadlines only fail a test when exceeded; none of them is a wait by itself. The gateway is
// ready when it prints `listening proxy=… mcp=… routes=… jwks=…` on stderr. Children are
// stopped by their own PID only.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const GATEWAY_BIN = process.env.GATEWAY_BIN
  ? path.resolve(REPO, process.env.GATEWAY_BIN)
  : path.join(REPO, 'target/debug/mcp-oauth-gateway');

const READY_RE = /listening proxy=(\S+) mcp=(\S+) routes=(\S+) jwks=(\S+)/;
// eslint-disable-next-line no-control-regex
export const ANSI_RE = /\x1b\[[0-9;?]*[A-Za-z]/g;
const OUTPUT_LINES = 400;

export class CheckError extends Error {}

export function check(cond, message) {
  if (!cond) throw new CheckError(message);
}

/** Rejects after `ms` with "`what` timed out"; `cancel` clears the timer. */
export function deadline(ms, what) {
  let timer;
  const promise = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return { promise, cancel: () => clearTimeout(timer) };
}

/** `work`, or an error once `ms` have passed. */
export async function withDeadline(ms, what, work) {
  const d = deadline(ms, what);
  try {
    return await Promise.race([work, d.promise]);
  } finally {
    d.cancel();
  }
}

/** Keeps `child`'s stdout and stderr lines, ANSI escapes stripped, as `[name stream] line` in
 * `sink` (the last OUTPUT_LINES); `onLine(stream, line)` sees each one. */
export function collectOutput(child, name, sink, onLine) {
  for (const [stream, label] of [[child.stdout, 'stdout'], [child.stderr, 'stderr']]) {
    if (!stream) continue;
    createInterface({ input: stream }).on('line', (raw) => {
      const line = raw.replace(ANSI_RE, '');
      sink.push(`[${name} ${label}] ${line}`);
      if (sink.length > OUTPUT_LINES) sink.shift();
      if (onLine) onLine(label, line);
    });
  }
}

/**
 * A child process that is ready once a line of its output matches a pattern. Its output is
 * kept in `output` for failure reports; `exitInfo` is `{code, signal}` once it has exited.
 */
export class ReadyProcess {
  /** `name` labels its output lines and the errors about it; `log` reports. */
  constructor(name, log = console.error) {
    this.name = name;
    this.log = log;
    this.output = [];
    this.child = null;
    this.exited = null;
    this.exitInfo = null;
  }

  /**
   * Spawns `command args` (stdin closed; `options` go to spawn) and resolves with the match of
   * `readyRe` against the first matching line on `readyOn` ('stdout' or 'stderr'). Rejects if
   * it cannot start, exits first (the message ends with `exitHint`), or `readyMs` pass.
   */
  spawnReady(command, args, { readyRe, readyOn, readyMs = 30_000, options = {}, exitHint = '' }) {
    const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        resolve(this.exitInfo);
      });
    });
    const ready = new Promise((resolve, reject) => {
      let settled = false;
      const settle = (f, v) => {
        if (!settled) {
          settled = true;
          f(v);
        }
      };
      collectOutput(child, this.name, this.output, (label, line) => {
        const m = label === readyOn && !settled ? readyRe.exec(line) : null;
        if (m) settle(resolve, m);
      });
      child.once('error', (e) => settle(reject, new Error(`cannot start ${this.name} (${command}): ${e.message}`)));
      child.once('exit', (code, signal) =>
        settle(reject, new Error(`${this.name} exited before it was ready (code=${code}, signal=${signal})${exitHint}`)));
    });
    return withDeadline(readyMs, `${this.name} readiness`, ready);
  }

  /**
   * SIGTERM to the one process started, by its PID; SIGKILL if it has not exited within
   * `exitMs`. Returns `{code, signal, timedOut?}` (null if it never started).
   */
  async stop(exitMs = 10_000) {
    const child = this.child;
    if (!child || child.pid === undefined || this.exitInfo !== null) return this.exitInfo;
    child.kill('SIGTERM');
    try {
      return await withDeadline(exitMs, `${this.name} exit after SIGTERM`, this.exited);
    } catch {
      this.log(`${this.name} ignored SIGTERM; sending SIGKILL to pid ${child.pid}`);
      child.kill('SIGKILL');
      return { ...(await this.exited), timedOut: true };
    }
  }
}

/** The gateway binary with a fresh data directory; its output is kept for failure reports. */
export class Gateway extends ReadyProcess {
  /** `label` names the data directory; `extraArgs` follow the listener flags; `log` reports. */
  constructor({ label = 'e2e', extraArgs = [], log = console.error } = {}) {
    super('gateway', log);
    this.dataDir = mkdtempSync(path.join(tmpdir(), `mcp-gw-${label}-`));
    this.extraArgs = extraArgs;
    this.addrs = null;
  }

  /** Spawn it; resolves with `{proxy, mcp, routes, jwks}` once the readiness line appears. */
  async start(readyMs = 30_000) {
    const args = [
      '--proxy-addr', '127.0.0.1:0',
      '--mcp-addr', '127.0.0.1:0',
      '--routes-addr', '127.0.0.1:0',
      '--jwks-addr', '127.0.0.1:0',
      '--data-dir', this.dataDir,
      ...this.extraArgs,
    ];
    this.log(`starting ${GATEWAY_BIN} ${args.join(' ')}`);
    const m = await this.spawnReady(GATEWAY_BIN, args, {
      readyRe: READY_RE,
      readyOn: 'stderr',
      readyMs,
      options: { env: { ...process.env, NO_COLOR: '1' } },
    });
    this.addrs = { proxy: m[1], mcp: m[2], routes: m[3], jwks: m[4] };
    return this.addrs;
  }

  /** As ReadyProcess.stop, then removes the data directory. */
  async stop(exitMs = 10_000) {
    const info = await super.stop(exitMs);
    rmSync(this.dataDir, { recursive: true, force: true });
    return info;
  }
}

// ---------------------------------------------------------------------------
// The MCP TypeScript SDK's OAuth client side, in memory
// ---------------------------------------------------------------------------

/**
 * An MCP client's redirect URI: a loopback HTTP server on 127.0.0.1 port 0 (what a native
 * client listens on) that answers GET /callback and keeps the query of each in `received`.
 */
export function startCallbackServer() {
  const received = []; // URLSearchParams of every GET /callback
  const waiters = []; // { state, resolve }
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (req.method === 'GET' && url.pathname === '/callback') {
      received.push(url.searchParams);
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('Authorization complete. You may close this window.');
      for (const w of waiters.splice(0)) {
        if (url.searchParams.get('state') === w.state) w.resolve(url.searchParams);
        else waiters.push(w);
      }
    } else {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      resolve({
        redirectUrl: `http://127.0.0.1:${port}/callback`,
        received,
        /** The params of the callback carrying `state` (already arrived, or when it does). */
        forState: (state) => {
          const got = received.find((p) => p.get('state') === state);
          if (got) return Promise.resolve(got);
          return new Promise((r) => waiters.push({ state, resolve: r }));
        },
        close: () => new Promise((r) => {
          server.closeAllConnections();
          server.close(() => r());
        }),
      });
    });
  });
}

/**
 * An OAuthClientProvider for @modelcontextprotocol/sdk (duck-typed) that keeps everything in
 * memory: a public client (PKCE, no secret) with the one redirect URI `redirectUrl`.
 * redirectToAuthorization only records the URL in `authorizationUrls`, as an application
 * hands it to the system browser; a driver that plays the user agent itself overrides it.
 */
export class InMemoryOAuthProvider {
  /** `clientName` goes into dynamic registration; `log` reports invalidated credentials. */
  constructor({ redirectUrl, clientName, log = console.error }) {
    this._redirectUrl = redirectUrl;
    this._clientName = clientName;
    this._log = log;
    this._clientInformation = undefined;
    this._tokens = undefined;
    this._codeVerifier = undefined;
    this._discoveryState = undefined;
    this._state = undefined;
    this.authorizationUrls = []; // every redirectToAuthorization() call
  }

  get redirectUrl() {
    return this._redirectUrl;
  }

  get clientMetadata() {
    return {
      client_name: this._clientName,
      redirect_uris: [this._redirectUrl],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  }

  /** The state of the latest authorization request. */
  get lastState() {
    return this._state;
  }

  state() {
    this._state = randomBytes(16).toString('base64url');
    return this._state;
  }

  clientInformation() {
    return this._clientInformation;
  }

  saveClientInformation(info) {
    this._clientInformation = info;
  }

  tokens() {
    return this._tokens;
  }

  saveTokens(tokens) {
    this._tokens = tokens;
  }

  saveCodeVerifier(codeVerifier) {
    this._codeVerifier = codeVerifier;
  }

  codeVerifier() {
    if (!this._codeVerifier) throw new Error('no code verifier saved');
    return this._codeVerifier;
  }

  saveDiscoveryState(state) {
    this._discoveryState = state;
  }

  discoveryState() {
    return this._discoveryState;
  }

  invalidateCredentials(scope) {
    this._log(`SDK invalidated credentials: ${scope}`);
    if (scope === 'all' || scope === 'client') this._clientInformation = undefined;
    if (scope === 'all' || scope === 'tokens') this._tokens = undefined;
    if (scope === 'all' || scope === 'verifier') this._codeVerifier = undefined;
    if (scope === 'all' || scope === 'discovery') this._discoveryState = undefined;
  }

  redirectToAuthorization(authorizationUrl) {
    this.authorizationUrls.push(new URL(authorizationUrl));
  }
}
