// A real OpenID provider (oidc-provider, a certified implementation) for the gateway's
// auth_mode = "external" tests.
//
//   node idp.mjs PORT --client-id ID --client-secret SECRET [--resource URL]... [--scope S]...
//
// Listens on 127.0.0.1:PORT (0: any free port); the issuer is http://127.0.0.1:<real port>.
// One confidential client (client_secret_basic, client_credentials only). Resource indicators
// (RFC 8707) are on: a token request naming one of the --resource URLs gets a JWT access
// token (RS256, typ at+jwt) whose `aud` is that URL and whose `scope` is what was asked
// within the --scope values; any other resource is refused with invalid_target. The keys are
// generated at start and never leave the process except as the public JWKS at /jwks.
//
// Readiness: one stdout line `idp listening issuer=http://127.0.0.1:PORT`.
// SIGTERM / SIGINT close the server and exit 0.

import { generateKeyPairSync, randomBytes, randomUUID } from "node:crypto";
import http from "node:http";
import process from "node:process";

import Provider, { errors } from "oidc-provider";

function parseArgs(argv) {
  const out = { port: undefined, clientId: undefined, clientSecret: undefined, resources: [], scopes: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--client-id") out.clientId = value();
    else if (a === "--client-secret") out.clientSecret = value();
    else if (a === "--resource") out.resources.push(value());
    else if (a === "--scope") out.scopes.push(value());
    else if (out.port === undefined && /^\d+$/.test(a)) out.port = Number(a);
    else throw new Error(`unexpected argument ${a}`);
  }
  if (out.port === undefined || !out.clientId || !out.clientSecret) {
    throw new Error("usage: node idp.mjs PORT --client-id ID --client-secret SECRET [--resource URL]... [--scope S]...");
  }
  if (out.scopes.length === 0) out.scopes = ["mcp:read", "mcp:write"];
  return out;
}

let opts;
try {
  opts = parseArgs(process.argv.slice(2));
} catch (e) {
  console.error(`idp: ${e.message}`);
  process.exit(2);
}

// The provider is created once the real port (and so the issuer) is known.
let handler = (_req, res) => {
  res.statusCode = 503;
  res.end("starting");
};
const server = http.createServer((req, res) => handler(req, res));

server.listen(opts.port, "127.0.0.1", () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;

  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const signingJwk = { ...privateKey.export({ format: "jwk" }), kid: randomUUID(), use: "sig", alg: "RS256" };
  const resources = new Set(opts.resources);
  const scopeString = opts.scopes.join(" ");

  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: opts.clientId,
        client_secret: opts.clientSecret,
        grant_types: ["client_credentials"],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: "client_secret_basic",
        scope: scopeString,
      },
    ],
    scopes: ["openid", ...opts.scopes],
    cookies: { keys: [randomBytes(32).toString("base64url")] },
    ttl: { ClientCredentials: 600 },
    jwks: { keys: [signingJwk] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // A request without `resource` gets no JWT (opaque, userinfo-only): nothing the
        // gateway accepts.
        defaultResource: (_ctx, _client, oneOf) => oneOf,
        useGrantedResource: () => false,
        getResourceServerInfo: (_ctx, resourceIndicator, _client) => {
          if (!resources.has(resourceIndicator)) {
            throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
          }
          return {
            scope: scopeString,
            audience: resourceIndicator,
            accessTokenFormat: "jwt",
            accessTokenTTL: 600,
            jwt: { sign: { alg: "RS256" } },
          };
        },
      },
    },
  });
  provider.on("server_error", (_ctx, err) => console.error("idp server_error:", err));
  handler = provider.callback();
  console.log(`idp listening issuer=${issuer}`);
});

server.on("error", (err) => {
  console.error(`idp: cannot listen on 127.0.0.1:${opts.port}: ${err.message}`);
  process.exit(1);
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
