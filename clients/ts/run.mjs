#!/usr/bin/env node
// End-to-end test: the unmodified official MCP TypeScript SDK client
// (@modelcontextprotocol/sdk, pinned in package.json) discovers the gateway's OAuth
// metadata, registers dynamically, completes the authorization-code + PKCE flow
// (consent approved headlessly, like a browser would), and then calls tools through
// the gateway's public proxy URL.
//
// Usage: node clients/ts/run.mjs   (GATEWAY_BIN overrides the binary path; GATEWAY_URL runs the
// flow against a gateway that is already running there, e.g. a load balancer in front of
// several replicas, instead of starting one; MCP_PATH names the MCP endpoint's path there,
// default /mcp)
// Prints "1 passed, 0 failed" and exits 0 on success, "0 passed, 1 failed" and exits 1 otherwise.

import { randomBytes } from 'node:crypto';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

import {
  CheckError, Gateway, InMemoryOAuthProvider, check, startCallbackServer, withDeadline,
} from '../harness.mjs';

const READY_TIMEOUT_MS = Number(process.env.READY_TIMEOUT_MS ?? 30_000); // only used to fail the test, never to wait
const TEST_TIMEOUT_MS = 60_000; // overall deadline for the OAuth + MCP part
const EXIT_TIMEOUT_MS = 10_000; // deadline for the gateway to exit after SIGTERM

const log = (...args) => console.error('[ts-e2e]', ...args);

// ---------------------------------------------------------------------------
// Headless "browser": approves the consent page
// ---------------------------------------------------------------------------

function decodeHtml(s) {
  return s
    .replace(/&quot;/g, '"')
    .replace(/&#x27;|&#39;/g, "'")
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&#x2F;|&#47;/gi, '/')
    .replace(/&amp;/g, '&');
}

function parseAttributes(tag) {
  const attrs = {};
  const re = /([a-zA-Z_:][-a-zA-Z0-9_:.]*)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?/g;
  // skip the tag name
  const body = tag.replace(/^<\s*[a-zA-Z]+/, '').replace(/\/?>$/, '');
  for (const m of body.matchAll(re)) {
    attrs[m[1].toLowerCase()] = decodeHtml(m[2] ?? m[3] ?? m[4] ?? '');
  }
  return attrs;
}

function parseConsentPage(html) {
  const forms = [...html.matchAll(/<form\b[^>]*>([\s\S]*?)<\/form>/gi)];
  check(forms.length === 1, `consent page must contain exactly one <form>, found ${forms.length}`);
  const formTag = forms[0][0].match(/<form\b[^>]*>/i)[0];
  const form = parseAttributes(formTag);
  check((form.method ?? '').toLowerCase() === 'post', `consent form method is ${JSON.stringify(form.method)}, expected post`);
  check(form.action === '/consent', `consent form action is ${JSON.stringify(form.action)}, expected "/consent"`);
  const inner = forms[0][1];
  const fields = {};
  for (const m of inner.matchAll(/<input\b[^>]*>/gi)) {
    const a = parseAttributes(m[0]);
    if (a.name && (a.type ?? 'text').toLowerCase() === 'hidden') fields[a.name] = a.value ?? '';
  }
  const buttons = [...inner.matchAll(/<button\b[^>]*>/gi)].map((m) => parseAttributes(m[0]));
  const decisions = buttons
    .filter((b) => (b.type ?? 'submit').toLowerCase() === 'submit' && b.name === 'decision')
    .map((b) => b.value);
  check(fields.request_id, 'consent form has no hidden request_id');
  check(fields.csrf_token, 'consent form has no hidden csrf_token');
  check(decisions.includes('approve') && decisions.includes('deny'),
    `consent form must have decision buttons approve and deny, found ${JSON.stringify(decisions)}`);
  return { action: form.action, fields };
}

/** Collects `name=value` pairs from Set-Cookie headers, as a browser would replay them. */
function cookieHeader(response) {
  const setCookies = typeof response.headers.getSetCookie === 'function' ? response.headers.getSetCookie() : [];
  return setCookies.map((c) => c.split(';', 1)[0].trim()).filter(Boolean).join('; ');
}

// ---------------------------------------------------------------------------
// OAuthClientProvider (in memory) that approves consent itself
// ---------------------------------------------------------------------------

class ConsentApprovingProvider extends InMemoryOAuthProvider {
  /** `callback` is the loopback redirect target (startCallbackServer). */
  constructor(callback) {
    super({ redirectUrl: callback.redirectUrl, clientName: 'mcp-oauth-gateway TS SDK e2e', log });
    this._callback = callback;
    this.authorizationCode = undefined; // filled by redirectToAuthorization
  }

  /**
   * The "user agent": loads the consent page, approves it, follows the redirect back to the
   * loopback callback, and keeps the authorization code for finishAuth().
   */
  async redirectToAuthorization(authorizationUrl) {
    super.redirectToAuthorization(authorizationUrl);
    const authUrl = new URL(authorizationUrl);
    log(`authorize: ${authUrl.origin}${authUrl.pathname} scope=${authUrl.searchParams.get('scope')} resource=${authUrl.searchParams.get('resource')}`);
    check(authUrl.searchParams.get('code_challenge_method') === 'S256', 'SDK did not request S256 PKCE');
    check(authUrl.searchParams.get('state') === this.lastState, 'authorize URL does not carry the provider state');

    const page = await fetch(authUrl, { redirect: 'manual', headers: { Accept: 'text/html' } });
    const html = await page.text();
    check(page.status === 200,
      `GET /authorize answered ${page.status} (Location: ${page.headers.get('location')}), body: ${html.slice(0, 500)}`);
    const { action, fields } = parseConsentPage(html);

    const consentUrl = new URL(action, authUrl);
    const headers = {
      'Content-Type': 'application/x-www-form-urlencoded',
      Origin: consentUrl.origin,
      Referer: authUrl.href,
    };
    const cookies = cookieHeader(page);
    if (cookies) headers.Cookie = cookies;
    const body = new URLSearchParams({ ...fields, decision: 'approve' });
    const consent = await fetch(consentUrl, { method: 'POST', headers, body, redirect: 'manual' });
    const consentBody = await consent.text();
    check(consent.status === 302 || consent.status === 303,
      `POST /consent answered ${consent.status}, expected 302; body: ${consentBody.slice(0, 500)}`);
    const location = consent.headers.get('location');
    check(location, 'POST /consent redirect has no Location header');
    const back = new URL(location, consentUrl);
    log(`consent redirected to ${back.origin}${back.pathname} (code redacted)`);

    const expected = new URL(this.redirectUrl);
    check(back.origin === expected.origin && back.pathname === expected.pathname,
      `consent redirected to ${back.origin}${back.pathname}, expected ${this.redirectUrl}`);
    check(!back.searchParams.get('error'),
      `consent redirect carries error=${back.searchParams.get('error')} (${back.searchParams.get('error_description')})`);
    const code = back.searchParams.get('code');
    check(code, 'consent redirect has no code');
    check(back.searchParams.get('state') === this.lastState,
      `state mismatch: got ${back.searchParams.get('state')}, sent ${this.lastState}`);
    // RFC 9207: the iss parameter must equal the issuer of the metadata the SDK discovered.
    const issuer = this.discoveryState()?.authorizationServerMetadata?.issuer;
    check(issuer, 'SDK saved no authorization server metadata issuer');
    check(back.searchParams.get('iss') === issuer,
      `iss mismatch: got ${back.searchParams.get('iss')}, metadata issuer ${issuer}`);

    // Deliver the redirect to the loopback listener, exactly as the browser would.
    const delivered = await fetch(back, { redirect: 'manual' });
    await delivered.text();
    check(delivered.status === 200, `loopback callback answered ${delivered.status}`);
    const got = this._callback.received.at(-1);
    check(got && got.get('code') === code, 'loopback callback did not receive the code');

    this.authorizationCode = code;
  }
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

function textOf(result) {
  check(Array.isArray(result?.content), `tool result has no content array: ${JSON.stringify(result)}`);
  return result.content.filter((c) => c.type === 'text').map((c) => c.text).join('\n');
}

async function runTest(base) {
  // MCP_PATH: a route of a gateway with [[routes]] (its own resource and metadata).
  const mcpUrl = new URL(`${base}${process.env.MCP_PATH ?? '/mcp'}`);
  const callback = await startCallbackServer();
  const clients = [];
  try {
    const provider = new ConsentApprovingProvider(callback);

    // 1. First connection: no token -> 401 -> SDK discovers, registers, starts authorization,
    //    our provider approves consent, and the SDK surfaces UnauthorizedError.
    const transport1 = new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider });
    const client1 = new Client({ name: 'mcp-oauth-gateway-ts-e2e', version: '0.0.0' });
    clients.push(client1);
    let firstError;
    try {
      await client1.connect(transport1);
    } catch (err) {
      firstError = err;
    }
    check(firstError instanceof UnauthorizedError,
      `first connect should fail with UnauthorizedError, got ${firstError ? firstError.stack ?? firstError : 'success'}`);
    check(provider.authorizationUrls.length === 1,
      `redirectToAuthorization called ${provider.authorizationUrls.length} times, expected 1`);
    const info = provider.clientInformation();
    check(info?.client_id, 'SDK did not register a client');
    log(`registered client_id=${info.client_id}`);
    check(provider.authorizationCode, 'no authorization code was obtained');

    // 2. Exchange the code (the SDK's documented finishAuth step).
    await transport1.finishAuth(provider.authorizationCode);
    const tokens = provider.tokens();
    check(tokens?.access_token, 'finishAuth saved no access token');
    check(String(tokens.token_type).toLowerCase() === 'bearer', `token_type is ${tokens.token_type}`);
    check(tokens.refresh_token, 'token response has no refresh_token');
    log(`token: scope=${tokens.scope} expires_in=${tokens.expires_in}`);
    await client1.close().catch(() => {});

    // 3. Reconnect with a new transport; the provider now has tokens.
    const transport2 = new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider });
    const client2 = new Client({ name: 'mcp-oauth-gateway-ts-e2e', version: '0.0.0' });
    clients.push(client2);
    await client2.connect(transport2);
    check(provider.authorizationUrls.length === 1, 'SDK asked for authorization again after finishAuth');
    log(`connected: server=${JSON.stringify(client2.getServerVersion())}`);

    // 4. tools/list
    const { tools } = await client2.listTools();
    const names = tools.map((t) => t.name);
    log(`tools: ${names.join(', ')}`);
    const echo = tools.find((t) => t.name === 'echo');
    check(echo, `tools/list has no echo tool: ${JSON.stringify(names)}`);
    check(names.includes('whoami'), `tools/list has no whoami tool: ${JSON.stringify(names)}`);
    // The SDK asked for the scope named in the 401 challenge (mcp:read): write tools stay hidden.
    check(!names.includes('add_note'), `tools/list shows add_note to an mcp:read token: ${JSON.stringify(names)}`);
    const props = Object.keys(echo.inputSchema?.properties ?? {});
    const required = echo.inputSchema?.required ?? [];
    const argName = props.includes('message') ? 'message' : required.length === 1 ? required[0] : props.length === 1 ? props[0] : undefined;
    check(argName, `cannot tell echo's argument from its inputSchema: ${JSON.stringify(echo.inputSchema)}`);
    log(`echo argument: ${argName}`);

    // 5. tools/call echo
    const message = `hi from the TS SDK ${randomBytes(4).toString('hex')}`;
    const echoResult = await client2.callTool({ name: 'echo', arguments: { [argName]: message } });
    check(!echoResult.isError, `echo returned isError: ${JSON.stringify(echoResult)}`);
    const echoText = textOf(echoResult);
    check(echoText.includes(message), `echo answer ${JSON.stringify(echoText)} does not contain ${JSON.stringify(message)}`);
    log(`echo -> ${echoText}`);

    // 6. tools/call whoami
    const whoResult = await client2.callTool({ name: 'whoami', arguments: {} });
    check(!whoResult.isError, `whoami returned isError: ${JSON.stringify(whoResult)}`);
    const whoText = textOf(whoResult) + JSON.stringify(whoResult.structuredContent ?? '');
    check(whoText.includes(info.client_id), `whoami answer ${JSON.stringify(whoText)} does not name client_id ${info.client_id}`);
    check(whoText.includes('mcp:read'), `whoami answer ${JSON.stringify(whoText)} does not list scope mcp:read`);
    log(`whoami -> ${textOf(whoResult)}`);

    await transport2.terminateSession().catch((err) => log(`terminateSession: ${err.message}`));
  } finally {
    for (const c of clients) await c.close().catch(() => {});
    await callback.close();
  }
}

async function againstRunning(base) {
  try {
    await withDeadline(TEST_TIMEOUT_MS, 'the OAuth + MCP flow', runTest(base));
  } catch (error) {
    console.error(error instanceof CheckError ? `FAIL: ${error.message}` : `FAIL: ${error.stack ?? error}`);
    console.log('0 passed, 1 failed');
    process.exit(1);
  }
  console.log('1 passed, 0 failed');
  process.exit(0);
}

async function main() {
  if (process.env.GATEWAY_URL) return againstRunning(process.env.GATEWAY_URL.replace(/\/$/, ''));
  const gateway = new Gateway({ label: 'ts-e2e', log });
  let error;
  try {
    const addrs = await gateway.start(READY_TIMEOUT_MS);
    log(`gateway ready: ${JSON.stringify(addrs)}`);
    const base = `http://${addrs.proxy}`;
    await withDeadline(TEST_TIMEOUT_MS, 'the OAuth + MCP flow', runTest(base));
  } catch (err) {
    error = err;
  } finally {
    const exit = await gateway.stop(EXIT_TIMEOUT_MS);
    if (!error && exit && (exit.timedOut || exit.code !== 0)) {
      error = new Error(`gateway did not exit 0 after SIGTERM: ${JSON.stringify(exit)}`);
    }
    if (error || process.env.E2E_VERBOSE) {
      console.error('--- gateway output ---');
      for (const line of gateway.output.slice(-200)) console.error(line);
      console.error('----------------------');
    }
  }
  if (error) {
    console.error(error instanceof CheckError ? `FAIL: ${error.message}` : `FAIL: ${error.stack ?? error}`);
    console.log('0 passed, 1 failed');
    process.exit(1);
  }
  console.log('1 passed, 0 failed');
  process.exit(0);
}

await main();
