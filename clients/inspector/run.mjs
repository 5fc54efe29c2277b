#!/usr/bin/env node
// End-to-end test in a real browser: the MCP Inspector (@modelcontextprotocol/inspector,
// pinned in package.json) is started on free loopback ports, headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core) opens the Inspector's own web UI, picks the
// Streamable HTTP transport, enters the gateway's {base}/mcp and connects. The Inspector then
// runs its OAuth flow on its own (discovery, dynamic registration, authorize); the browser
// lands on the gateway's consent page, where the test presses Approve like a person would;
// the Inspector's /oauth/callback exchanges the code and reconnects. Then the test lists the
// tools, calls `echo` with a fresh message and waits for the answer on the page.
//
// Usage: node clients/inspector/run.mjs   (GATEWAY_BIN overrides the gateway binary,
//        CHROMIUM_BIN the browser). Screenshots go to <repo>/test-artifacts/.
// Prints "1 passed, 0 failed" (exit 0) or "0 passed, 1 failed" plus the reason (exit 1).

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { ANSI_RE, CheckError, Gateway, REPO, check, deadline, withDeadline } from '../harness.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const INSPECTOR_BIN = path.join(HERE, 'node_modules/@modelcontextprotocol/inspector/cli/build/cli.js');
const ARTIFACTS = path.join(REPO, 'test-artifacts');

// Deadlines: each only fails the test when exceeded, none is a wait by itself.
const GATEWAY_READY_MS = 30_000;
const INSPECTOR_READY_MS = 60_000;
const UI_STEP_MS = 30_000; // one page condition (element visible, URL reached)
const TEST_MS = 150_000; // the whole test
const EXIT_MS = 10_000; // a child to exit after SIGTERM

const log = (...args) => console.error('[inspector-e2e]', ...args);

/** A free loopback TCP port: bind port 0, read it, close. Never 3001-3004. */
async function freePort(taken) {
  for (;;) {
    const port = await new Promise((resolve, reject) => {
      const srv = net.createServer();
      srv.unref();
      srv.once('error', reject);
      srv.listen(0, '127.0.0.1', () => {
        const { port: p } = srv.address();
        srv.close(() => resolve(p));
      });
    });
    if (!taken.has(port) && !(port >= 3001 && port <= 3004)) {
      taken.add(port);
      return port;
    }
  }
}

/** Resolves true once something accepts a TCP connection on 127.0.0.1:port. */
function tryConnect(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => {
      sock.destroy();
      resolve(false);
    });
  });
}

/** Polls the ports by connecting until all accept; fails at the deadline or if `alive()` turns false. */
async function waitForPorts(ports, ms, alive, what) {
  const until = Date.now() + ms;
  let backoff = 25;
  for (;;) {
    const ok = await Promise.all(ports.map(tryConnect));
    if (ok.every(Boolean)) return;
    if (!alive()) throw new Error(`${what} exited before it accepted connections`);
    if (Date.now() > until) throw new Error(`${what} did not accept connections on ${ports.join(', ')} within ${ms} ms`);
    // Poll interval between connection attempts (not a readiness sleep).
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, 250);
  }
}

/** Collects a child's output lines (capped) so a failure can show them. */
function collect(child, name, sink, onLine) {
  for (const [stream, label] of [[child.stdout, 'stdout'], [child.stderr, 'stderr']]) {
    if (!stream) continue;
    createInterface({ input: stream }).on('line', (raw) => {
      const line = raw.replace(ANSI_RE, '');
      sink.push(`[${name} ${label}] ${line}`);
      if (sink.length > 400) sink.shift();
      if (onLine) onLine(label, line);
    });
  }
}

/** Stops a process group we started (detached child => its PID is the group id). */
async function stopGroup(child, name) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  try {
    process.kill(-child.pid, 'SIGTERM');
  } catch {
    return;
  }
  const d = deadline(EXIT_MS, `${name} exit`);
  try {
    await Promise.race([exited, d.promise]);
  } catch {
    log(`${name} ignored SIGTERM; sending SIGKILL to its process group`);
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  } finally {
    d.cancel();
  }
}

// ---------------------------------------------------------------------------

class Inspector {
  constructor(clientPort, serverPort) {
    this.clientPort = clientPort;
    this.serverPort = serverPort;
    this.token = randomBytes(32).toString('hex');
    this.output = [];
    this.child = null;
    this.exited = false;
  }

  get origin() {
    return `http://127.0.0.1:${this.clientPort}`;
  }

  get proxyAddress() {
    return `http://127.0.0.1:${this.serverPort}`;
  }

  /** The page URL with the proxy address and its session token, as the Inspector's launcher prints it. */
  get startUrl() {
    const q = new URLSearchParams({
      MCP_PROXY_FULL_ADDRESS: this.proxyAddress,
      MCP_PROXY_AUTH_TOKEN: this.token,
    });
    return `${this.origin}/?${q}`;
  }

  start() {
    log(`starting MCP Inspector: UI ${this.origin}, proxy ${this.proxyAddress}`);
    this.child = spawn(process.execPath, [INSPECTOR_BIN], {
      cwd: HERE,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
      env: {
        ...process.env,
        CLIENT_PORT: String(this.clientPort),
        SERVER_PORT: String(this.serverPort),
        HOST: '127.0.0.1',
        ALLOWED_ORIGINS: this.origin,
        MCP_PROXY_AUTH_TOKEN: this.token,
        MCP_AUTO_OPEN_ENABLED: 'false',
        NO_COLOR: '1',
      },
    });
    this.child.once('exit', () => { this.exited = true; });
    this.child.once('error', () => { this.exited = true; });
    collect(this.child, 'inspector', this.output);
    return waitForPorts([this.clientPort, this.serverPort], INSPECTOR_READY_MS,
      () => !this.exited, 'MCP Inspector');
  }

  stop() {
    return stopGroup(this.child, 'MCP Inspector');
  }
}

// ---------------------------------------------------------------------------

async function driveInspector(page, inspector, base, trace) {
  const mcpUrl = `${base}/mcp`;
  const gwOrigin = new URL(base).origin;
  const marker = `hello-inspector-${randomBytes(4).toString('hex')}`;

  log(`opening ${inspector.origin}`);
  await page.goto(inspector.startUrl, { waitUntil: 'domcontentloaded' });

  // Transport type: Streamable HTTP.
  await page.locator('#transport-type-select').click();
  await page.getByRole('option', { name: 'Streamable HTTP' }).click();
  await page.locator('#transport-type-select').filter({ hasText: 'Streamable HTTP' }).waitFor();

  // Server URL.
  const urlInput = page.locator('#sse-url-input');
  await urlInput.fill(mcpUrl);
  check((await urlInput.inputValue()) === mcpUrl, 'URL field did not take the gateway URL');

  // Connect: the Inspector gets the 401, discovers, registers and sends the browser to /authorize.
  log(`connecting to ${mcpUrl}`);
  trace.push('connect');
  await page.getByRole('button', { name: 'Connect', exact: true }).click();
  await page.waitForURL((u) => u.origin === gwOrigin && u.pathname === '/authorize', { timeout: UI_STEP_MS });
  const authUrl = new URL(page.url());
  log(`on the consent page: ${authUrl.pathname}?${[...authUrl.searchParams.keys()].join('&')}`);
  check(authUrl.searchParams.get('code_challenge_method') === 'S256', 'authorize request without PKCE S256');
  check(authUrl.searchParams.get('redirect_uri') === `${inspector.origin}/oauth/callback`,
    `unexpected redirect_uri ${authUrl.searchParams.get('redirect_uri')}`);

  const approve = page.locator('#approve');
  await approve.waitFor({ state: 'visible' });
  await page.screenshot({ path: path.join(ARTIFACTS, 'inspector-consent.png'), fullPage: true });
  trace.push('consent page');
  const [consentResp] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST'
      && new URL(r.url()).origin === gwOrigin && new URL(r.url()).pathname === '/consent'),
    approve.click(),
  ]);
  check(consentResp.status() === 302 || consentResp.status() === 303,
    `POST /consent (Approve) answered ${consentResp.status()}, not a redirect to the callback`);

  // Back at the Inspector's /oauth/callback: it exchanges the code and reconnects.
  await page.waitForURL((u) => u.origin === inspector.origin, { timeout: UI_STEP_MS });
  trace.push('callback');
  log('back at the Inspector; waiting for the connection');
  await page.getByText('Connected', { exact: true }).waitFor({ state: 'visible' });
  trace.push('connected');

  // Tools tab -> List Tools -> echo.
  await page.getByRole('tab', { name: 'Tools' }).click();
  await page.getByRole('button', { name: 'List Tools' }).click();
  const echoItem = page.getByText('echo', { exact: true }).first();
  await echoItem.waitFor({ state: 'visible' });
  trace.push('tools listed');
  await echoItem.click();

  // The echo form: the Inspector renders one field per parameter, with the parameter name as id.
  const runTool = page.getByRole('button', { name: 'Run Tool' });
  await runTool.waitFor({ state: 'visible' });
  const input = page.locator('#message');
  await input.waitFor({ state: 'visible' });
  await input.fill(marker);
  await runTool.click();
  trace.push('tool called');

  const resultHeader = page.getByRole('heading', { name: /Tool Result:/ });
  await resultHeader.waitFor({ state: 'visible' });
  await resultHeader.getByText('Success', { exact: true }).waitFor({ state: 'visible' });
  const answer = page.getByText(marker).last();
  await answer.waitFor({ state: 'visible' });
  await answer.scrollIntoViewIfNeeded();
  await page.screenshot({ path: path.join(ARTIFACTS, 'inspector-tool-result.png'), fullPage: true });
  trace.push('result shown');
  log(`echo answered "${marker}" on the page`);
}

async function main() {
  mkdirSync(ARTIFACTS, { recursive: true });
  const gateway = new Gateway({ label: 'inspector', log });
  let inspector = null;
  let context = null;
  const profileDir = mkdtempSync(path.join(tmpdir(), 'inspector-e2e-chromium-'));
  const browserLog = [];
  const trace = [];
  const consentPost = {}; // what the browser sent to POST /consent and what it got
  let failure = null;
  let page = null;

  try {
    await withDeadline(TEST_MS, 'inspector e2e test', (async () => {
      const base = `http://${(await gateway.start(GATEWAY_READY_MS)).proxy}`;
      log(`gateway ready at ${base}`);

      const taken = new Set();
      const clientPort = await freePort(taken);
      const serverPort = await freePort(taken);
      inspector = new Inspector(clientPort, serverPort);
      await inspector.start();
      log('MCP Inspector accepts connections');

      context = await chromium.launchPersistentContext(profileDir, {
        executablePath: CHROMIUM_BIN,
        headless: true,
        args: [
          '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
          '--disable-background-networking', '--disable-component-update', '--disable-sync',
        ],
        viewport: { width: 1400, height: 1000 },
      });
      context.setDefaultTimeout(UI_STEP_MS);
      page = context.pages()[0] ?? await context.newPage();
      page.on('console', (m) => {
        if (m.type() === 'error' || m.type() === 'warning') browserLog.push(`console.${m.type()}: ${m.text()}`);
      });
      page.on('pageerror', (e) => browserLog.push(`pageerror: ${e.message}`));
      page.on('requestfailed', (r) => browserLog.push(`requestfailed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
      page.on('request', async (r) => {
        if (r.method() === 'POST' && r.url().startsWith(`${base}/consent`)) {
          const h = await r.allHeaders().catch(() => ({}));
          consentPost.origin = h.origin ?? '(none)';
          consentPost.secFetchSite = h['sec-fetch-site'] ?? '(none)';
          browserLog.push(`request: POST /consent origin=${consentPost.origin} sec-fetch-site=${consentPost.secFetchSite}`);
        }
      });
      page.on('response', (r) => {
        const u = r.url();
        if (r.request().method() === 'POST' && u.startsWith(`${base}/consent`)) consentPost.status = r.status();
        if (u.startsWith(base) || r.status() >= 400) browserLog.push(`response: ${r.status()} ${r.request().method()} ${u}`);
      });

      await driveInspector(page, inspector, base, trace);
    })());
  } catch (e) {
    failure = e;
  }

  if (failure && page) {
    try {
      await page.screenshot({ path: path.join(ARTIFACTS, 'inspector-failure.png'), fullPage: true });
    } catch { /* page gone */ }
  }
  try { if (context) await context.close(); } catch { /* browser gone */ }
  rmSync(profileDir, { recursive: true, force: true });
  if (inspector) await inspector.stop();
  await gateway.stop(EXIT_MS);

  if (failure) {
    console.error(`---- steps done: ${trace.join(' -> ') || '(none)'}`);
    console.error('---- browser log ----');
    console.error(browserLog.slice(-80).join('\n') || '(empty)');
    console.error('---- MCP Inspector output ----');
    console.error(inspector ? inspector.output.slice(-80).join('\n') : '(not started)');
    console.error('---- gateway output ----');
    console.error(gateway.output.slice(-60).join('\n'));
    if (consentPost.status !== undefined && consentPost.status >= 400) {
      console.log(`FAIL inspector-oauth-e2e: the gateway answered ${consentPost.status} to the browser's `
        + `POST /consent (Approve), which carried Origin: ${consentPost.origin} and `
        + `Sec-Fetch-Site: ${consentPost.secFetchSite}`
        + (consentPost.origin === 'null'
          ? ' (Chromium sends Origin: null because the consent page has Referrer-Policy: no-referrer)'
          : ''));
    }
    console.log(`FAIL inspector-oauth-e2e: ${failure.stack || failure}`);
    console.log('0 passed, 1 failed');
    return 1;
  }
  console.log(`ok inspector-oauth-e2e (steps: ${trace.join(' -> ')})`);
  console.log('1 passed, 0 failed');
  return 0;
}

main().then((code) => process.exit(code), (e) => {
  console.error(e);
  console.log('0 passed, 1 failed');
  process.exit(1);
});
