#!/usr/bin/env node
// End-to-end test of the operator's page in a real browser. The gateway binary is started
// with all four listeners on 127.0.0.1 port 0 (the real addresses come from its
// `listening proxy=… mcp=… routes=… jwks=…` stderr line) and --auto-approve. One OAuth flow
// runs with plain fetch (register, authorize, token) and an MCP `initialize` with the token
// must succeed. Then headless Chromium (Debian's /usr/bin/chromium, driven by the pinned
// playwright-core) opens /admin, finds the grant, presses its Revoke button like a person
// would, checks that the page asking for confirmation names the grant (and that asking
// revoked nothing), presses that page's Revoke, and the same token's next MCP request must
// be refused with 401 and an `invalid_token` challenge.
//
// /admin is opened through the public proxy when the proxy routes it to the authorization
// server, else on the routes listener directly (loopback either way, so no sign-in).
//
// Usage: node clients/admin-browser/run.mjs   (GATEWAY_BIN overrides the gateway binary,
//        CHROMIUM_BIN the browser). Screenshots go to <repo>/test-artifacts/admin-*.png.
// Prints "1 passed, 0 failed" (exit 0) or "0 passed, 1 failed" plus the reason (exit 1).

import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { chromium } from 'playwright-core';

import { CheckError, Gateway, REPO, check, withDeadline } from '../harness.mjs';

const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const ARTIFACTS = path.join(REPO, 'test-artifacts');
// Never contacted: with --auto-approve the code arrives in the Location header.
const REDIRECT_URI = 'http://127.0.0.1:9/callback';

// Deadlines: each only fails the test when exceeded, none is a wait by itself.
const GATEWAY_READY_MS = 30_000;
const UI_STEP_MS = 20_000;
const TEST_MS = 90_000;
const EXIT_MS = 10_000;

const log = (...args) => console.error('[admin-e2e]', ...args);

const b64url = (buf) => buf.toString('base64url');

// ---------------------------------------------------------------------------

/** Register, authorize (auto-approved), redeem: a client id and its tokens. */
async function oauthFlow(base) {
  const reg = await fetch(`${base}/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ redirect_uris: [REDIRECT_URI], client_name: 'admin-browser e2e' }),
  });
  check(reg.status === 201, `register answered ${reg.status}`);
  const { client_id: clientId } = await reg.json();

  const verifier = b64url(randomBytes(48));
  const challenge = b64url(createHash('sha256').update(verifier).digest());
  const state = b64url(randomBytes(8));
  const q = new URLSearchParams({
    response_type: 'code',
    client_id: clientId,
    redirect_uri: REDIRECT_URI,
    code_challenge: challenge,
    code_challenge_method: 'S256',
    state,
    scope: 'mcp:read',
    resource: `${base}/mcp`,
  });
  const auth = await fetch(`${base}/authorize?${q}`, { redirect: 'manual' });
  check(auth.status === 302, `authorize answered ${auth.status}, not a redirect (is --auto-approve on?)`);
  const back = new URL(auth.headers.get('location'));
  check(back.searchParams.get('state') === state, 'state did not come back');
  const code = back.searchParams.get('code');
  check(code, `no code in the redirect (error=${back.searchParams.get('error')})`);

  const tok = await fetch(`${base}/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'authorization_code',
      code,
      redirect_uri: REDIRECT_URI,
      client_id: clientId,
      code_verifier: verifier,
      resource: `${base}/mcp`,
    }),
  });
  check(tok.status === 200, `token answered ${tok.status}`);
  const tokens = await tok.json();
  check(tokens.access_token && tokens.refresh_token, 'the token response lacks a token');
  return { clientId, access: tokens.access_token, refresh: tokens.refresh_token };
}

/** An MCP initialize with `token`: its status and challenge. */
async function mcpInitialize(base, token) {
  const res = await fetch(`${base}/mcp`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${token}`,
      accept: 'application/json, text/event-stream',
      'content-type': 'application/json',
      'mcp-protocol-version': '2025-06-18',
    },
    body: JSON.stringify({
      jsonrpc: '2.0', id: 1, method: 'initialize',
      params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'admin-e2e', version: '1' } },
    }),
  });
  await res.arrayBuffer();
  return { status: res.status, challenge: res.headers.get('www-authenticate') || '' };
}

/** Where the browser opens /admin: the proxy if it routes there, else the routes listener. */
async function adminOrigin(base, addrs) {
  const res = await fetch(`${base}/admin`);
  const text = await res.text();
  if (res.status === 200 && text.includes('Gateway operator')) return base;
  log(`the proxy does not route /admin yet (${res.status}); using the routes listener ${addrs.routes}`);
  return `http://${addrs.routes}`;
}

async function driveAdmin(page, base, adminBase, flow, trace) {
  log(`opening ${adminBase}/admin`);
  const res = await page.goto(`${adminBase}/admin`, { waitUntil: 'domcontentloaded' });
  check(res && res.status() === 200, `GET /admin answered ${res && res.status()}`);
  const row = page.locator(`tr.grant-row[data-client-id="${flow.clientId}"]`);
  await row.waitFor({ state: 'visible' });
  check((await row.count()) === 1, 'expected one grant row for the client');
  check((await row.textContent()).includes('mcp:read'), 'the grant row does not show its scope');
  await page.locator(`tr.client-row[data-client-id="${flow.clientId}"]`).waitFor({ state: 'visible' });
  const events = await page.locator('#events').textContent();
  check(events.includes('code_redeemed'), 'the security events do not show the code redemption');
  const html = await page.content();
  check(!html.includes(flow.access) && !html.includes(flow.refresh), 'a token is on the page');
  await page.screenshot({ path: path.join(ARTIFACTS, 'admin-before.png'), fullPage: true });
  trace.push('grant listed');

  // Revoke asks first: a page naming the grant, with its own Revoke button and a Cancel.
  const isRevokePost = (r) => r.request().method() === 'POST'
    && new URL(r.url()).pathname === '/admin/grants/revoke';
  const [ask] = await Promise.all([
    page.waitForResponse(isRevokePost),
    row.getByRole('button', { name: 'Revoke' }).click(),
  ]);
  check(ask.status() === 200, `the unconfirmed POST /admin/grants/revoke answered ${ask.status()}`);
  const confirm = page.locator('form#confirm');
  await confirm.waitFor({ state: 'visible' });
  const asked = await page.locator('#what').textContent();
  check(asked.includes(flow.clientId) && asked.includes('admin-browser e2e') && asked.includes('mcp:read'),
    `the confirmation page does not name the grant: ${asked}`);
  check(await page.locator('a#cancel[href="/admin"]').count() === 1, 'the confirmation page has no Cancel link');
  const still = await mcpInitialize(base, flow.access);
  check(still.status === 200, `asking revoked the token already (MCP answered ${still.status})`);
  await page.screenshot({ path: path.join(ARTIFACTS, 'admin-confirm.png'), fullPage: true });
  trace.push('asked to confirm');

  const [post] = await Promise.all([
    page.waitForResponse(isRevokePost),
    confirm.getByRole('button', { name: 'Revoke' }).click(),
  ]);
  check(post.status() === 303, `POST /admin/grants/revoke answered ${post.status()}`);
  await page.waitForURL((u) => u.pathname === '/admin');
  await page.locator('#no-grants').waitFor({ state: 'visible' });
  const after = await page.locator('#events').textContent();
  check(after.includes('admin_grant_revoked'), 'the revocation is not among the security events');
  await page.screenshot({ path: path.join(ARTIFACTS, 'admin-after.png'), fullPage: true });
  trace.push('grant revoked in the browser');
}

async function main() {
  mkdirSync(ARTIFACTS, { recursive: true });
  const gateway = new Gateway({ label: 'admin', extraArgs: ['--auto-approve'], log });
  const profileDir = mkdtempSync(path.join(tmpdir(), 'admin-e2e-chromium-'));
  const browserLog = [];
  const trace = [];
  let context = null;
  let page = null;
  let failure = null;

  try {
    await withDeadline(TEST_MS, 'admin e2e test', (async () => {
      const addrs = await gateway.start(GATEWAY_READY_MS);
      const base = `http://${addrs.proxy}`;
      log(`gateway ready at ${base} (routes ${addrs.routes})`);

      const flow = await oauthFlow(base);
      trace.push('oauth flow');
      const before = await mcpInitialize(base, flow.access);
      check(before.status === 200, `MCP initialize with a fresh token answered ${before.status}`);
      trace.push('mcp call');

      const adminBase = await adminOrigin(base, addrs);
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
      page.on('console', (m) => browserLog.push(`console.${m.type()}: ${m.text()}`));
      page.on('pageerror', (e) => browserLog.push(`pageerror: ${e.message}`));
      page.on('response', (r) => browserLog.push(`response: ${r.status()} ${r.request().method()} ${new URL(r.url()).pathname}`));

      await driveAdmin(page, base, adminBase, flow, trace);

      const afterCall = await mcpInitialize(base, flow.access);
      check(afterCall.status === 401, `the revoked token's next MCP request answered ${afterCall.status}, not 401`);
      check(afterCall.challenge.includes('error="invalid_token"'),
        `the 401 challenge does not say invalid_token: ${afterCall.challenge}`);
      trace.push('next mcp call refused');

      const refreshed = await fetch(`${base}/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: flow.refresh, client_id: flow.clientId }),
      });
      const body = await refreshed.json();
      check(refreshed.status === 400 && body.error === 'invalid_grant',
        `the revoked grant's refresh token answered ${refreshed.status} ${body.error}`);
      trace.push('refresh refused');
    })());
  } catch (e) {
    failure = e;
  }

  if (failure && page) {
    try {
      await page.screenshot({ path: path.join(ARTIFACTS, 'admin-failure.png'), fullPage: true });
    } catch { /* page gone */ }
  }
  try { if (context) await context.close(); } catch { /* browser gone */ }
  rmSync(profileDir, { recursive: true, force: true });
  await gateway.stop(EXIT_MS);

  if (failure) {
    console.error(`---- steps done: ${trace.join(' -> ') || '(none)'}`);
    console.error('---- browser log ----');
    console.error(browserLog.slice(-60).join('\n') || '(empty)');
    console.error('---- gateway output ----');
    console.error(gateway.output.slice(-60).join('\n'));
    console.log(`FAIL admin-revoke-e2e: ${failure.stack || failure}`);
    console.log('0 passed, 1 failed');
    return 1;
  }
  console.log(`ok admin-revoke-e2e (steps: ${trace.join(' -> ')})`);
  console.log('1 passed, 0 failed');
  return 0;
}

main().then((code) => process.exit(code), (e) => {
  console.error(e);
  console.log('0 passed, 1 failed');
  process.exit(1);
});
