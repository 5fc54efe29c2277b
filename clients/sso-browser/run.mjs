#!/usr/bin/env node
// End-to-end test of sign-in through an organisation's identity provider, in a real browser:
// MCP client -> gateway -> the provider's sign-in page -> back -> consent -> a tool call that
// shows the person's email.
//
// The identity provider is a real OpenID provider (clients/thirdparty/sso_idp.mjs, built on
// oidc-provider) on 127.0.0.1 port 0, with one confidential client; it is ready when it
// prints `sso-idp listening issuer=…` on stdout. The gateway binary is started (clients/
// harness.mjs) with a config holding one `[[identity_providers]]` (kind oidc, allowed_domains
// ["example.com"]); the provider is then told the gateway's redirect URI
// `<gateway>/login/callback` through its /__control/redirect_uris endpoint.
//
// The MCP client is the unmodified official TypeScript SDK (Client + StreamableHTTPClientTransport
// with harness.mjs's in-memory OAuthClientProvider), against `<gateway>/mcp`. When the SDK
// asks to send the person to the authorization URL, headless Chromium (Debian's
// /usr/bin/chromium, driven by the pinned playwright-core) opens it and a person is played:
// "Sign in with Corp SSO" on the gateway's sign-in page, username and password on the
// provider's login page, Allow on the provider's consent page, Approve on the gateway's
// consent page. The browser then lands on the SDK client's redirect URI, a loopback HTTP
// server on 127.0.0.1 port 0, which hands the code to transport.finishAuth(); the client
// reconnects and calls `whoami`, which must show alice's email, name and subject.
//
// Tests:
//   sso-signin-whoami  alice (alice@example.com) signs in and whoami shows her.
//   sso-refused        bob (bob@other.org, not in example.com), in another browser context,
//                      gets the gateway's 403 page "… may not use this server", and the
//                      redirect URI never receives a code for that attempt.
//
// Usage: node clients/sso-browser/run.mjs   (GATEWAY_BIN overrides the gateway binary,
//        CHROMIUM_BIN the browser, NODE_BIN the node that runs the provider). Screenshots of
//        failures go to <repo>/test-artifacts/sso-*.png.
// Prints "N passed, M failed"; exits 0 only when nothing failed.

import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { chromium } from 'playwright-core';

import {
  CheckError, Gateway, InMemoryOAuthProvider, REPO, ReadyProcess, check, startCallbackServer, withDeadline,
} from '../harness.mjs';

const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const NODE_BIN = process.env.NODE_BIN || process.execPath;
const THIRDPARTY = path.join(REPO, 'clients/thirdparty');
const SSO_IDP_SCRIPT = path.join(THIRDPARTY, 'sso_idp.mjs');
const ARTIFACTS = path.join(REPO, 'test-artifacts');

const PROVIDER_ID = 'corp';
const PROVIDER_NAME = 'Corp SSO';
const IDP_CLIENT_ID = 'mcp-gateway';
const IDP_READY_RE = /sso-idp listening issuer=(\S+)/;

// Deadlines: each only fails a test when exceeded, none is a wait by itself.
const IDP_READY_MS = 30_000;
const GATEWAY_READY_MS = 30_000;
const UI_STEP_MS = 20_000; // one page condition (element visible, URL reached, response seen)
const TEST_MS = 90_000; // one test
const SETUP_MS = 60_000; // provider + gateway + browser
const EXIT_MS = 10_000; // a child to exit after SIGTERM

const log = (...args) => console.error('[sso-e2e]', ...args);

// ---------------------------------------------------------------------------
// The organisation's identity provider (clients/thirdparty/sso_idp.mjs)
// ---------------------------------------------------------------------------

class SsoIdp extends ReadyProcess {
  constructor() {
    super('sso-idp', log);
    this.clientId = IDP_CLIENT_ID;
    this.clientSecret = randomBytes(24).toString('base64url');
    this.issuer = null;
  }

  /** Spawn it; resolves with the issuer once the readiness line appears. */
  async start() {
    const args = [SSO_IDP_SCRIPT, '0', '--client-id', this.clientId, '--client-secret', this.clientSecret,
      '--access-token-ttl', '3600'];
    log(`starting ${NODE_BIN} ${SSO_IDP_SCRIPT} 0 --client-id ${this.clientId} --client-secret ***`);
    const m = await this.spawnReady(NODE_BIN, args, {
      readyRe: IDP_READY_RE,
      readyOn: 'stdout',
      readyMs: IDP_READY_MS,
      options: { cwd: THIRDPARTY },
      exitHint: '; is oidc-provider installed in clients/thirdparty/node_modules?',
    });
    this.issuer = m[1];
    return this.issuer;
  }

  async allowRedirectUris(uris) {
    const res = await fetch(`${this.issuer}/__control/redirect_uris`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ redirect_uris: uris }),
    });
    const body = await res.json();
    check(res.status === 200 && JSON.stringify(body.redirect_uris) === JSON.stringify(uris),
      `POST /__control/redirect_uris answered ${res.status} ${JSON.stringify(body)}`);
  }
}

function gatewayConfig(idp, secretFile) {
  return `# Written by clients/sso-browser/run.mjs
[[identity_providers]]
id = "${PROVIDER_ID}"
kind = "oidc"
name = "${PROVIDER_NAME}"
issuer = "${idp.issuer}"
client_id = "${idp.clientId}"
client_secret_file = ${JSON.stringify(secretFile)}
groups_claim = "groups"
allowed_domains = ["example.com"]
`;
}

/**
 * A first connect without a token: the SDK discovers, registers, and asks to send the person
 * to the authorization URL; connect then fails with UnauthorizedError. Returns the URL.
 */
async function startAuthorization(mcpUrl, provider, gwOrigin) {
  const transport = new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider });
  const client = new Client({ name: 'mcp-oauth-gateway-sso-browser-e2e', version: '0.0.0' });
  let error;
  try {
    await client.connect(transport);
  } catch (e) {
    error = e;
  }
  check(error instanceof UnauthorizedError,
    `the first connect should fail with UnauthorizedError, got ${error ? error.stack ?? error : 'success'}`);
  check(provider.authorizationUrls.length === 1,
    `redirectToAuthorization called ${provider.authorizationUrls.length} times, expected 1`);
  check(provider.clientInformation()?.client_id, 'the SDK did not register a client');
  const url = provider.authorizationUrls[0];
  check(url.origin === gwOrigin && url.pathname === '/authorize',
    `the authorization URL is ${url.origin}${url.pathname}, not the gateway's /authorize`);
  check(url.searchParams.get('code_challenge_method') === 'S256', 'the SDK did not ask for S256 PKCE');
  check(url.searchParams.get('state') === provider.lastState, 'the authorization URL lacks the provider state');
  check(url.searchParams.get('redirect_uri') === provider.redirectUrl,
    `redirect_uri is ${url.searchParams.get('redirect_uri')}, not ${provider.redirectUrl}`);
  await client.close().catch(() => {});
  return { url, transport };
}

function textOf(result) {
  check(Array.isArray(result?.content), `tool result has no content array: ${JSON.stringify(result)}`);
  return result.content.filter((c) => c.type === 'text').map((c) => c.text).join('\n');
}

// ---------------------------------------------------------------------------
// The person, in the browser
// ---------------------------------------------------------------------------

/** From the gateway's /authorize to the provider and through its login and consent pages. */
async function signInAtProvider(page, env, authUrl, login, trace) {
  const { gwOrigin, idpOrigin } = env;
  log(`${login}: opening the authorization URL`);
  const res = await page.goto(authUrl.href, { waitUntil: 'domcontentloaded' });
  check(res && res.status() === 200, `GET /authorize answered ${res && res.status()}`);
  const button = page.locator(`#provider-${PROVIDER_ID}`);
  await button.waitFor({ state: 'visible' });
  const label = (await button.textContent()).trim();
  check(label === `Sign in with ${PROVIDER_NAME}`, `the provider button says ${JSON.stringify(label)}`);
  check((await page.locator('input[type=password]').count()) === 0,
    'the sign-in page shows a password form, though no [[users]] are configured');
  trace.push(`${login}: gateway sign-in page`);

  await button.click();
  await page.waitForURL((u) => u.origin === idpOrigin && u.pathname.startsWith('/interaction/'));
  await page.locator('#login').waitFor({ state: 'visible' });
  trace.push(`${login}: provider login page`);
  await page.locator('#login').fill(login);
  await page.locator('#password').fill(`any-password-${randomBytes(3).toString('hex')}`);
  await page.locator('#sign-in').click();

  const allow = page.locator('#consent-form #approve');
  await allow.waitFor({ state: 'visible' });
  check(new URL(page.url()).origin === idpOrigin, `the provider's consent page is at ${page.url()}`);
  trace.push(`${login}: provider consent page`);

  // The provider answers 303 to the gateway's /login/callback; keep that response.
  const [callback] = await Promise.all([
    page.waitForResponse((r) => {
      const u = new URL(r.url());
      return u.origin === gwOrigin && u.pathname === '/login/callback';
    }),
    allow.click(),
  ]);
  const cb = new URL(callback.url());
  check(cb.searchParams.get('iss') === env.issuer, `the provider's answer carries iss=${cb.searchParams.get('iss')}`);
  trace.push(`${login}: back at the gateway (${callback.status()})`);
  return callback;
}

async function testSignInWhoami(env, trace) {
  const { browser, gateway, callback, mcpUrl, gwOrigin } = env;
  const provider = new InMemoryOAuthProvider({ redirectUrl: callback.redirectUrl, clientName: 'SSO browser e2e (alice)', log });
  const { url, transport } = await startAuthorization(mcpUrl, provider, gwOrigin);
  trace.push('SDK asked for authorization');

  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  context.setDefaultTimeout(UI_STEP_MS);
  const page = await context.newPage();
  env.pages.alice = page;
  watch(page, env.browserLog, 'alice');

  const back = await signInAtProvider(page, env, url, 'alice', trace);
  await page.waitForURL((u) => u.origin === gwOrigin);
  const approve = page.locator('form[action="/consent"] #approve');
  await approve.waitFor({ state: 'visible' });
  check(back.status() < 400, `the gateway answered ${back.status()} to the provider's answer`);
  const consentText = await page.locator('main').textContent();
  // "Signed in as …": the person, by email, name or subject.
  check(['alice@example.com', 'Alice Example', `${env.issuer}#alice-0001`].some((w) => consentText.includes(w)),
    `the gateway's consent page does not name the person: ${consentText.replace(/\s+/g, ' ').slice(0, 300)}`);
  trace.push('gateway consent page');

  const arrived = callback.forState(provider.lastState);
  await approve.click();
  const params = await withDeadline(UI_STEP_MS, 'the code at the redirect URI', arrived);
  await page.waitForURL((u) => u.href.startsWith(callback.redirectUrl));
  check(!params.get('error'), `the redirect URI got error=${params.get('error')} (${params.get('error_description')})`);
  const code = params.get('code');
  check(code, 'the redirect URI got no code');
  const asIssuer = provider.discoveryState()?.authorizationServerMetadata?.issuer;
  check(asIssuer && params.get('iss') === asIssuer, `iss is ${params.get('iss')}, the metadata says ${asIssuer}`);
  trace.push('code at the redirect URI');
  await context.close();

  await transport.finishAuth(code);
  const tokens = provider.tokens();
  check(tokens?.access_token, 'finishAuth saved no access token');
  trace.push('finishAuth');

  const client = new Client({ name: 'mcp-oauth-gateway-sso-browser-e2e', version: '0.0.0' });
  try {
    await client.connect(new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider }));
    check(provider.authorizationUrls.length === 1, 'the SDK asked for authorization again after finishAuth');
    trace.push('reconnected');
    const result = await client.callTool({ name: 'whoami', arguments: {} });
    check(!result.isError, `whoami returned isError: ${JSON.stringify(result)}`);
    const text = textOf(result);
    log(`whoami -> ${text}`);
    let me;
    try {
      me = JSON.parse(text);
    } catch {
      throw new CheckError(`whoami did not answer JSON: ${text}`);
    }
    check(me.email === 'alice@example.com', `whoami email is ${JSON.stringify(me.email)}: ${text}`);
    check(me.name === 'Alice Example', `whoami name is ${JSON.stringify(me.name)}: ${text}`);
    check(me.sub === `${env.issuer}#alice-0001`, `whoami sub is ${JSON.stringify(me.sub)}, not ${env.issuer}#alice-0001`);
    trace.push('whoami shows alice');
  } finally {
    await client.close().catch(() => {});
  }
  check(!gateway.output.join('\n').includes(env.idp.clientSecret), 'the gateway logged the provider client secret');
}

async function testRefused(env, trace) {
  const { browser, callback, mcpUrl, gwOrigin } = env;
  const provider = new InMemoryOAuthProvider({ redirectUrl: callback.redirectUrl, clientName: 'SSO browser e2e (bob)', log });
  const { url } = await startAuthorization(mcpUrl, provider, gwOrigin);
  const state = provider.lastState;
  const before = callback.received.length;
  trace.push('SDK asked for authorization');

  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  context.setDefaultTimeout(UI_STEP_MS);
  const page = await context.newPage();
  env.pages.bob = page;
  watch(page, env.browserLog, 'bob');

  const back = await signInAtProvider(page, env, url, 'bob', trace);
  check(back.status() === 403, `the gateway answered ${back.status()} to bob's sign-in, not 403`);
  await page.waitForLoadState('domcontentloaded');
  const here = new URL(page.url());
  check(here.origin === gwOrigin && here.pathname === '/login/callback',
    `after the refusal the browser is at ${here.origin}${here.pathname}`);
  const text = (await page.locator('body').textContent()).replace(/\s+/g, ' ');
  check(text.includes('may not use this server'), `the refusal page does not say "may not use this server": ${text.slice(0, 400)}`);
  check(text.includes('bob@other.org'), `the refusal page does not name bob@other.org: ${text.slice(0, 400)}`);
  check((await page.locator('#error').textContent()).trim() === 'access_denied', 'the refusal page is not access_denied');
  check((await page.locator('form[action="/consent"]').count()) === 0, 'the refusal page has a consent form');
  const cookies = await context.cookies(gwOrigin);
  check(!cookies.some((c) => c.name === 'mog_session'), 'a refused person got a gateway session cookie');
  trace.push('refusal page');

  check(callback.received.length === before,
    `the redirect URI received ${callback.received.length - before} request(s) during bob's attempt`);
  check(!callback.received.some((p) => p.get('state') === state), 'the redirect URI received bob\'s state');
  check(provider.tokens() === undefined, 'the SDK client holds tokens for bob');
  check(env.gateway.output.some((l) => l.includes('login_refused')), 'the gateway did not log login_refused');
  trace.push('no code at the redirect URI');
  await context.close();
}

function watch(page, sink, who) {
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') sink.push(`${who} console.${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => sink.push(`${who} pageerror: ${e.message}`));
  page.on('requestfailed', (r) => sink.push(`${who} requestfailed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => {
    const u = new URL(r.url());
    sink.push(`${who} response: ${r.status()} ${r.request().method()} ${u.origin}${u.pathname}`);
    if (sink.length > 400) sink.shift();
  });
}

// ---------------------------------------------------------------------------

async function main() {
  mkdirSync(ARTIFACTS, { recursive: true });
  const idp = new SsoIdp();
  const workDir = mkdtempSync(path.join(tmpdir(), 'sso-e2e-'));
  let gateway = null;
  let browser = null;
  let callback = null;
  const browserLog = [];
  const results = [];
  let setupFailure = null;
  const env = { idp, browserLog, pages: {} };

  try {
    await withDeadline(SETUP_MS, 'setup', (async () => {
      const issuer = await idp.start();
      log(`identity provider ready, issuer ${issuer}`);
      const secretFile = path.join(workDir, 'corp-secret');
      writeFileSync(secretFile, `${idp.clientSecret}\n`, { mode: 0o600 });
      const configFile = path.join(workDir, 'gateway.toml');
      writeFileSync(configFile, gatewayConfig(idp, secretFile));

      gateway = new Gateway({ label: 'sso', extraArgs: ['--config', configFile], log });
      const addrs = await gateway.start(GATEWAY_READY_MS);
      const base = `http://${addrs.proxy}`;
      log(`gateway ready at ${base}`);
      await idp.allowRedirectUris([`${base}/login/callback`]);

      callback = await startCallbackServer();
      browser = await chromium.launch({
        executablePath: CHROMIUM_BIN,
        headless: true,
        args: [
          '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
          '--disable-background-networking', '--disable-component-update', '--disable-sync',
        ],
      });
      Object.assign(env, {
        gateway, browser, callback, issuer,
        gwOrigin: new URL(base).origin,
        idpOrigin: new URL(issuer).origin,
        mcpUrl: new URL(`${base}/mcp`),
      });
    })());
  } catch (e) {
    setupFailure = e;
  }

  const tests = [
    ['sso-signin-whoami', testSignInWhoami, 'alice'],
    ['sso-refused', testRefused, 'bob'],
  ];
  for (const [name, fn, who] of tests) {
    const trace = [];
    let failure = setupFailure;
    if (!failure) {
      try {
        await withDeadline(TEST_MS, name, fn(env, trace));
      } catch (e) {
        failure = e;
      }
    }
    if (failure && env.pages[who]) {
      try {
        await env.pages[who].screenshot({ path: path.join(ARTIFACTS, `${name}-failure.png`), fullPage: true });
      } catch { /* page gone */ }
    }
    results.push({ name, failure, trace });
  }

  try { if (browser) await browser.close(); } catch { /* browser gone */ }
  if (callback) await callback.close();
  const gatewayExit = gateway ? await gateway.stop(EXIT_MS) : null;
  const idpExit = await idp.stop(EXIT_MS);
  rmSync(workDir, { recursive: true, force: true });
  log(`gateway exit ${JSON.stringify(gatewayExit)}, identity provider exit ${JSON.stringify(idpExit)}`);

  let passed = 0;
  let failed = 0;
  const anyFailed = results.some((r) => r.failure);
  if (anyFailed) {
    console.error('---- browser log ----');
    console.error(browserLog.slice(-80).join('\n') || '(empty)');
    console.error('---- identity provider output ----');
    console.error(idp.output.slice(-60).join('\n') || '(empty)');
    console.error('---- gateway output ----');
    console.error(gateway ? gateway.output.slice(-80).join('\n') : '(not started)');
  }
  for (const { name, failure, trace } of results) {
    if (failure) {
      failed += 1;
      console.log(`FAIL ${name}: ${failure instanceof CheckError ? failure.message : failure.stack || failure}`);
      console.log(`     steps done: ${trace.join(' -> ') || '(none)'}`);
    } else {
      passed += 1;
      console.log(`ok ${name} (steps: ${trace.join(' -> ')})`);
    }
  }
  console.log(`${passed} passed, ${failed} failed`);
  return failed ? 1 : 0;
}

main().then((code) => process.exit(code), (e) => {
  console.error(e);
  console.log('0 passed, 1 failed');
  process.exit(1);
});
