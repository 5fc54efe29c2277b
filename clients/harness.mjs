// What the end-to-end drivers in clients/*/run.mjs share: checks, deadlines, and the gateway
// binary as a child process on 127.0.0.1 port 0 everywhere. No dependencies, so each
// driver's own package imports it by relative path.
//
// Deadlines only fail a test when exceeded; none of them is a wait by itself. The gateway is
// ready when it prints `listening proxy=… mcp=… routes=… jwks=…` on stderr, and it is
// stopped by its own PID only.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
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

/** The gateway binary with a fresh data directory; its output is kept for failure reports. */
export class Gateway {
  /** `label` names the data directory; `extraArgs` follow the listener flags; `log` reports. */
  constructor({ label = 'e2e', extraArgs = [], log = console.error } = {}) {
    this.dataDir = mkdtempSync(path.join(tmpdir(), `mcp-gw-${label}-`));
    this.extraArgs = extraArgs;
    this.log = log;
    this.output = [];
    this.exitInfo = null;
    this.child = null;
    this.addrs = null;
  }

  /** Spawn it; resolves with `{proxy, mcp, routes, jwks}` once the readiness line appears. */
  start(readyMs = 30_000) {
    const args = [
      '--proxy-addr', '127.0.0.1:0',
      '--mcp-addr', '127.0.0.1:0',
      '--routes-addr', '127.0.0.1:0',
      '--jwks-addr', '127.0.0.1:0',
      '--data-dir', this.dataDir,
      ...this.extraArgs,
    ];
    this.log(`starting ${GATEWAY_BIN} ${args.join(' ')}`);
    const child = spawn(GATEWAY_BIN, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NO_COLOR: '1' },
    });
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
      for (const [stream, label] of [[child.stdout, 'stdout'], [child.stderr, 'stderr']]) {
        createInterface({ input: stream }).on('line', (raw) => {
          const line = raw.replace(ANSI_RE, '');
          this.output.push(`[gateway ${label}] ${line}`);
          if (this.output.length > OUTPUT_LINES) this.output.shift();
          const m = label === 'stderr' && !settled ? READY_RE.exec(line) : null;
          if (m) {
            this.addrs = { proxy: m[1], mcp: m[2], routes: m[3], jwks: m[4] };
            settle(resolve, this.addrs);
          }
        });
      }
      child.once('error', (e) => settle(reject, new Error(`cannot start ${GATEWAY_BIN}: ${e.message}`)));
      child.once('exit', (code, signal) =>
        settle(reject, new Error(`gateway exited before it was ready (code=${code}, signal=${signal})`)));
    });
    return withDeadline(readyMs, 'gateway readiness', ready);
  }

  /**
   * SIGTERM to the one process started, by its PID; SIGKILL if it has not exited within
   * `exitMs`. Removes the data directory. Returns `{code, signal, timedOut?}` (null if it
   * never started).
   */
  async stop(exitMs = 10_000) {
    const child = this.child;
    let info = this.exitInfo;
    if (child && child.pid !== undefined && info === null) {
      child.kill('SIGTERM');
      try {
        info = await withDeadline(exitMs, 'gateway exit after SIGTERM', this.exited);
      } catch {
        this.log(`the gateway ignored SIGTERM; sending SIGKILL to pid ${child.pid}`);
        child.kill('SIGKILL');
        info = { ...(await this.exited), timedOut: true };
      }
    }
    rmSync(this.dataDir, { recursive: true, force: true });
    return info;
  }
}
