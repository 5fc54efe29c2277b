// One MCP session against a server, with the official TypeScript SDK client, recording what
// the server offers and how it answers: the suite python_tests/test_upstream_parity.py runs
// against @modelcontextprotocol/server-everything behind the gateway twice (its HTTP mode as
// --upstream, its stdio mode as --upstream-cmd) and compares.
//
//   MCP_URL=http://127.0.0.1:PORT/mcp MCP_TOKEN=<access token> node clients/ts/parity.mjs
//
// The client declares sampling, elicitation and roots, answers the server's sampling and
// elicitation requests itself, and counts logging messages, progress and resource updates.
// Prints one JSON object on stdout; exits 1 (message on stderr) when the session fails.

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  ListRootsRequestSchema,
  LoggingMessageNotificationSchema,
  ResourceUpdatedNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';

const url = process.env.MCP_URL;
const token = process.env.MCP_TOKEN;
if (!url || !token) {
  console.error('MCP_URL and MCP_TOKEN are required');
  process.exit(2);
}

const seen = { sampling: 0, elicitation: 0, roots: 0, logging: 0, updated: 0 };
const client = new Client(
  { name: 'parity-suite', version: '1.0.0' },
  { capabilities: { sampling: {}, elicitation: {}, roots: { listChanged: true } } },
);
client.setRequestHandler(CreateMessageRequestSchema, async () => {
  seen.sampling += 1;
  return { model: 'parity-model', role: 'assistant', content: { type: 'text', text: 'sampled by the client' } };
});
client.setRequestHandler(ElicitRequestSchema, async () => {
  seen.elicitation += 1;
  return { action: 'decline' };
});
client.setRequestHandler(ListRootsRequestSchema, async () => {
  seen.roots += 1;
  return { roots: [] };
});
client.setNotificationHandler(LoggingMessageNotificationSchema, () => { seen.logging += 1; });
client.setNotificationHandler(ResourceUpdatedNotificationSchema, () => { seen.updated += 1; });

const outcome = async (f) => {
  try {
    return { ok: await f() };
  } catch (e) {
    return { error: e?.code ?? String(e?.message ?? e) };
  }
};

const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
try {
  await client.connect(transport);
  const out = {};
  out.server = client.getServerVersion()?.name;
  out.capabilities = Object.keys(client.getServerCapabilities() ?? {}).sort();
  const tools = (await client.listTools()).tools;
  out.tools = tools.map((t) => t.name).sort();
  out.prompts = (await client.listPrompts()).prompts.map((p) => p.name).sort();
  const resources = (await client.listResources()).resources;
  out.resources = resources.map((r) => r.uri).sort().slice(0, 10);
  out.templates = (await client.listResourceTemplates()).resourceTemplates.map((t) => t.uriTemplate).sort();
  out.read = await outcome(async () => (await client.readResource({ uri: resources[0].uri })).contents.length);
  out.prompt = await outcome(async () =>
    (await client.getPrompt({ name: 'args-prompt', arguments: { city: 'Lyon', state: 'Rhône' } })).messages.length);
  out.completion = await outcome(async () =>
    (await client.complete({
      ref: { type: 'ref/prompt', name: 'completable-prompt' },
      argument: { name: 'department', value: 'E' },
    })).completion.values.sort());
  out.setLevel = await outcome(async () => { await client.setLoggingLevel('debug'); return true; });
  out.subscribe = await outcome(async () => { await client.subscribeResource({ uri: resources[0].uri }); return true; });
  out.echo = await outcome(async () =>
    (await client.callTool({ name: 'echo', arguments: { message: 'parity' } })).content);
  out.structured = await outcome(async () =>
    (await client.callTool({ name: 'get-structured-content', arguments: { location: 'New York' } })).structuredContent != null);
  let progress = 0;
  out.longRunning = await outcome(async () => {
    await client.callTool(
      { name: 'trigger-long-running-operation', arguments: { duration: 1, steps: 3 } },
      undefined,
      { onprogress: () => { progress += 1; }, resetTimeoutOnProgress: true },
    );
    return true;
  });
  out.progress = progress;
  const sampler = tools.find((t) => t.name === 'trigger-sampling-request');
  if (sampler) {
    out.sampled = await outcome(async () =>
      JSON.stringify((await client.callTool({ name: sampler.name, arguments: { prompt: 'hi', maxTokens: 5 } })).content)
        .includes('sampled by the client'));
  }
  out.unknownMethod = await outcome(async () => client.request({ method: 'no/such-method', params: {} }, LoggingMessageNotificationSchema));
  out.seen = { sampling: seen.sampling > 0, elicitation: seen.elicitation, roots: seen.roots > 0 };
  await client.close();
  console.log(JSON.stringify(out));
} catch (e) {
  console.error(`parity suite failed: ${e?.stack ?? e}`);
  process.exit(1);
}
