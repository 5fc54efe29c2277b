// The client command the conformance runner starts for each scenario. It appends the MCP
// server URL as the last argument and passes scenario data (pre-registered credentials, a
// private key) in MCP_CONFORMANCE_CONTEXT; this turns both into `mcp-oauth-gateway client`
// flags, then acts like the suite's reference client: list tools, call `test-tool`.
//
// Two processes share one cache directory, so the second run also exercises the token
// cache (and step-up when the tool needs more scope than listing did).
//
// Environment: GATEWAY_BIN (the binary), CONFORMANCE_CACHE_ROOT (a fresh directory per suite
// run; each scenario gets its own subdirectory).

import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// The suite's authorization servers accept this URL as a client ID metadata document.
const CIMD_URL = 'https://conformance-test.local/client-metadata.json';

const url = process.argv.at(-1);
const bin = process.env.GATEWAY_BIN;
if (!bin || !url?.startsWith('http')) {
  console.error('usage: GATEWAY_BIN=... node adapter.mjs <mcp-url>');
  process.exit(2);
}
const ctx = JSON.parse(process.env.MCP_CONFORMANCE_CONTEXT ?? '{}');
const cacheDir = mkdtempSync(join(process.env.CONFORMANCE_CACHE_ROOT ?? tmpdir(), 'client-'));

const flags = ['client', '--headless', '--cache-dir', cacheDir, '--client-metadata-url', CIMD_URL];
const env = { ...process.env };
if (ctx.client_id) flags.push('--client-id', ctx.client_id);
// Secrets go through the environment and a 0600 file, not the command line.
if (ctx.client_secret) env.MCP_CLIENT_SECRET = ctx.client_secret;
if (ctx.private_key_pem) {
  const keyFile = join(cacheDir, 'client-key.pem');
  writeFileSync(keyFile, ctx.private_key_pem, { mode: 0o600 });
  flags.push('--client-assertion-key', keyFile);
}

function client(...action) {
  const r = spawnSync(bin, [...flags, url, ...action], { env, encoding: 'utf8' });
  process.stdout.write(r.stdout ?? '');
  process.stderr.write(r.stderr ?? '');
  if (r.status !== 0) process.exit(r.status ?? 1);
  return r.stdout ?? '';
}

const tools = client('tools');
if (tools.split('\n').some((line) => line.split(':')[0] === 'test-tool')) {
  client('call', 'test-tool');
}
