// A real OpenID provider (oidc-provider 8.8.1, a certified implementation) for the gateway's
// sign-in through an organisation's identity provider (SSO) in the flow tests.
//
//   node sso_idp.mjs PORT --client-id ID --client-secret SECRET [--access-token-ttl SECONDS]
//                    [--redirect-uri URL]...
//
// Listens on 127.0.0.1:PORT (0: any free port); the issuer is http://127.0.0.1:<real port>.
// Readiness: one stdout line `sso-idp listening issuer=http://127.0.0.1:PORT`.
// SIGTERM / SIGINT close the server and exit 0.
//
// The client: one confidential client, authenticated with client_secret_basic or
// client_secret_post (oidc-provider 8 accepts either for a client registered with one of
// them), grant types authorization_code + refresh_token, response type code, PKCE S256
// required (oidc-provider's default). Its redirect_uris are set at run time with
// POST /__control/redirect_uris (or --redirect-uri at start); until then the only registered
// one is a placeholder nothing can use. The client is served by this script's storage adapter
// (Client.find reads the current metadata; oidc-provider caches clients by a fingerprint of
// their metadata, so a change is picked up at the next request).
//
// Tokens: opaque access tokens (TTL --access-token-ttl, default 30 s) usable at /me (userinfo);
// a refresh token on every authorization_code grant, rotated on every use (a reused one is
// invalid_grant and revokes the grant). ID tokens are RS256 with the key generated at start
// (public at /jwks) and carry the user claims themselves (conformIdTokenClaims: false):
// sub; email, email_verified (scope email); name (scope profile); groups (always, also
// requestable as scope `groups`). Authorization responses carry `iss` (RFC 9207; the
// discovery document says authorization_response_iss_parameter_supported: true).
//
// Users (any password): alice  sub alice-0001 alice@example.com verified  "Alice Example"    [engineering, admins]
//                       bob    sub bob-0002   bob@other.org     verified  "Bob Other"        [sales]
//                       carol  sub carol-0003 carol@example.com UNVERIFIED "Carol Unverified" [engineering]
//
// Sign-in pages (own pages, not devInteractions), plain HTML forms without scripts:
//   login   GET /interaction/<uid>: <form id="login-form" method="post" action="/interaction/<uid>/login">
//           with <input id="login" name="login"> (the username), <input id="password"
//           name="password" type="password"> (anything) and <button id="sign-in" type="submit">.
//           An unknown username answers 200 with the same form again and
//           <p id="login-error" class="error">.
//   consent GET /interaction/<uid>: <form id="consent-form" method="post"
//           action="/interaction/<uid>/confirm"> with <button id="approve" type="submit">Allow</button>,
//           and <form id="deny-form" method="post" action="/interaction/<uid>/abort"> with
//           <button id="deny" type="submit">Deny</button> (answers error=access_denied to the client).
//   A browser test fills #login, #password, clicks #sign-in, then clicks #approve. Every step
//   answers 303 to the next page; the last one is a 303 to redirect_uri?code=…&state=…&iss=….
//   The provider keeps a session (cookie _session): a second authorization in the same browser
//   goes straight back to the client.
//
// Control endpoints (JSON, answered before oidc-provider sees the request):
//   POST /__control/redirect_uris   {"redirect_uris": ["http://127.0.0.1:PORT/cb", ...]}  (GET reads)
//   POST /__control/misbehave       {"mode": null | "wrong_nonce" | "foreign_key" | "alg_none" |
//                                    "replay" | "wrong_aud" | "expired" | "wrong_iss"}
//        The id_token of every authorization_code token response is replaced until the mode is
//        reset to null: wrong_nonce, wrong_aud, wrong_iss, expired (iat and exp an hour and more in
//        the past) are the real claims changed and re-signed with the real key; foreign_key is the
//        real claims signed by another RSA key under the real kid; alg_none is the real claims
//        unsigned (alg none, empty signature); replay is the untouched id_token of the previous
//        authorization_code exchange (there must have been one).
//   POST /__control/down            {"down": true | false}: while down every other request is 503.
//   GET  /__control/last_token_request  the last /token request: {"fields": {form fields, client_secret
//        masked}, "client_auth": "client_secret_basic" | "client_secret_post" | "none",
//        "basic_client_id", "status", "error", "id_token_mode"}, or null.
//   GET  /__control/token_requests  all of them (the last 100), oldest first.

import { generateKeyPairSync, randomBytes, randomUUID, sign as cryptoSign } from "node:crypto";
import http from "node:http";
import process from "node:process";

import Provider from "oidc-provider";

const USAGE =
  "usage: node sso_idp.mjs PORT --client-id ID --client-secret SECRET [--access-token-ttl SECONDS] [--redirect-uri URL]...";

function parseArgs(argv) {
  const out = { port: undefined, clientId: undefined, clientSecret: undefined, accessTokenTtl: 30, redirectUris: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--client-id") out.clientId = value();
    else if (a === "--client-secret") out.clientSecret = value();
    else if (a === "--access-token-ttl") {
      const v = value();
      if (!/^\d+$/.test(v) || Number(v) < 1) throw new Error("--access-token-ttl needs a positive number of seconds");
      out.accessTokenTtl = Number(v);
    } else if (a === "--redirect-uri") out.redirectUris.push(value());
    else if (out.port === undefined && /^\d+$/.test(a)) out.port = Number(a);
    else throw new Error(`unexpected argument ${a}`);
  }
  if (out.port === undefined || !out.clientId || !out.clientSecret) throw new Error(USAGE);
  return out;
}

let opts;
try {
  opts = parseArgs(process.argv.slice(2));
} catch (e) {
  console.error(`sso-idp: ${e.message}`);
  process.exit(2);
}

// -- users -------------------------------------------------------------------

const USERS = {
  alice: { sub: "alice-0001", email: "alice@example.com", email_verified: true, name: "Alice Example", groups: ["engineering", "admins"] },
  bob: { sub: "bob-0002", email: "bob@other.org", email_verified: true, name: "Bob Other", groups: ["sales"] },
  carol: { sub: "carol-0003", email: "carol@example.com", email_verified: false, name: "Carol Unverified", groups: ["engineering"] },
};
const BY_SUB = new Map(Object.values(USERS).map((u) => [u.sub, u]));

// -- mutable state driven by /__control/ ---------------------------------------

const PLACEHOLDER_REDIRECT_URI = "http://127.0.0.1:9/redirect-uris-not-configured";
const MISBEHAVIOURS = new Set(["wrong_nonce", "foreign_key", "alg_none", "replay", "wrong_aud", "expired", "wrong_iss"]);
const state = {
  redirectUris: [...opts.redirectUris],
  mode: null,
  down: false,
  tokenRequests: [],
  previousIdToken: null, // the untouched id_token of the last authorization_code exchange
};

function clientMetadata() {
  return {
    client_id: opts.clientId,
    client_secret: opts.clientSecret,
    client_name: "mcp-oauth-gateway (test client)",
    application_type: "web",
    redirect_uris: state.redirectUris.length ? [...state.redirectUris] : [PLACEHOLDER_REDIRECT_URI],
    grant_types: ["authorization_code", "refresh_token"],
    response_types: ["code"],
    token_endpoint_auth_method: "client_secret_basic",
    id_token_signed_response_alg: "RS256",
  };
}

// -- storage adapter: in memory, with the one client read from `state` ---------

const storage = new Map(); // "Model:id" -> { payload, expiresAt }
const sessionUids = new Map(); // session uid -> session id
const grantMembers = new Map(); // grantId -> Set of storage keys
const GRANTABLE = new Set(["AccessToken", "AuthorizationCode", "RefreshToken", "DeviceCode", "BackchannelAuthenticationRequest"]);
const epoch = () => Math.floor(Date.now() / 1000);

class Adapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    if (this.model === "Client") return; // the one client is not stored, see find()
    const key = this.key(id);
    storage.set(key, { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : undefined });
    if (this.model === "Session" && payload.uid) sessionUids.set(payload.uid, id);
    if (GRANTABLE.has(this.model) && payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(key);
    }
  }

  async find(id) {
    if (this.model === "Client") return id === opts.clientId ? clientMetadata() : undefined;
    const entry = storage.get(this.key(id));
    if (!entry) return undefined;
    if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
      storage.delete(this.key(id));
      return undefined;
    }
    return entry.payload;
  }

  async findByUid(uid) {
    const id = sessionUids.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(_userCode) {
    return undefined; // no device flow
  }

  async consume(id) {
    const entry = storage.get(this.key(id));
    if (entry) entry.payload.consumed = epoch();
  }

  async destroy(id) {
    storage.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grantMembers.get(grantId) ?? []) storage.delete(key);
    grantMembers.delete(grantId);
  }
}

// -- small helpers -------------------------------------------------------------

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function readBody(req, limit = 64 * 1024) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (c) => {
      size += c.length;
      if (size > limit) {
        reject(new Error("body too large"));
        req.destroy();
      } else chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function sendJson(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store", "content-length": Buffer.byteLength(data) });
  res.end(data);
}

function sendHtml(res, status, title, body) {
  const page = `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body>
<h1>${esc(title)}</h1>
${body}
</body></html>
`;
  res.writeHead(status, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store", "content-length": Buffer.byteLength(page) });
  res.end(page);
}

const b64json = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
const unb64json = (part) => JSON.parse(Buffer.from(part, "base64url").toString("utf8"));

function signRs256(header, payload, key) {
  const input = `${b64json(header)}.${b64json(payload)}`;
  return `${input}.${cryptoSign("sha256", Buffer.from(input), key).toString("base64url")}`;
}

// -- the server ----------------------------------------------------------------

let handler = (_req, res) => {
  res.statusCode = 503;
  res.end("starting");
};
const server = http.createServer((req, res) => {
  Promise.resolve(handler(req, res)).catch((err) => {
    console.error("sso-idp handler error:", err);
    if (!res.headersSent) sendJson(res, 500, { error: "server_error", error_description: String(err?.message ?? err) });
    else res.destroy();
  });
});

server.listen(opts.port, "127.0.0.1", () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;

  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const kid = randomUUID();
  const signingJwk = { ...privateKey.export({ format: "jwk" }), kid, use: "sig", alg: "RS256" };
  let foreignKey = null; // generated on first use by foreign_key

  const provider = new Provider(issuer, {
    adapter: Adapter,
    async findAccount(_ctx, sub) {
      const user = BY_SUB.get(sub);
      if (!user) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { sub: user.sub, email: user.email, email_verified: user.email_verified, name: user.name, groups: [...user.groups] };
        },
      };
    },
    claims: {
      openid: ["sub", "groups"],
      email: ["email", "email_verified"],
      profile: ["name"],
      groups: ["groups"],
    },
    scopes: ["openid", "offline_access", "email", "profile", "groups"],
    conformIdTokenClaims: false,
    responseTypes: ["code"],
    clientAuthMethods: ["client_secret_basic", "client_secret_post"],
    cookies: {
      keys: [randomBytes(32).toString("base64url")],
      // lax, not oidc-provider's default none: Chromium drops SameSite=None cookies on http.
      long: { httpOnly: true, sameSite: "lax", signed: true },
      short: { httpOnly: true, sameSite: "lax", signed: true },
    },
    jwks: { keys: [signingJwk] },
    features: {
      devInteractions: { enabled: false },
      userinfo: { enabled: true },
      revocation: { enabled: true },
    },
    interactions: {
      url: async (_ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed("refresh_token"),
    rotateRefreshToken: true,
    expiresWithSession: async () => false,
    ttl: {
      AccessToken: opts.accessTokenTtl,
      AuthorizationCode: 60,
      IdToken: 3600,
      RefreshToken: 24 * 3600,
      Interaction: 3600,
      Session: 24 * 3600,
      Grant: 24 * 3600,
      ClientCredentials: 600,
    },
  });
  provider.on("server_error", (_ctx, err) => console.error("sso-idp server_error:", err));

  function tamper(idToken, mode) {
    const [h, p] = idToken.split(".");
    const header = unb64json(h);
    const payload = unb64json(p);
    const now = epoch();
    switch (mode) {
      case "wrong_nonce":
        return signRs256(header, { ...payload, nonce: `not-${payload.nonce ?? "a-nonce"}-${randomBytes(4).toString("hex")}` }, privateKey);
      case "wrong_aud":
        return signRs256(header, { ...payload, aud: "some-other-client" }, privateKey);
      case "wrong_iss":
        return signRs256(header, { ...payload, iss: "http://127.0.0.1:9/not-the-issuer" }, privateKey);
      case "expired":
        return signRs256(header, { ...payload, iat: now - 7200, auth_time: now - 7200, exp: now - 3600 }, privateKey);
      case "foreign_key":
        foreignKey ??= generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey;
        return signRs256(header, payload, foreignKey);
      case "alg_none":
        return `${b64json({ alg: "none", typ: "JWT" })}.${b64json(payload)}.`;
      case "replay":
        if (!state.previousIdToken) {
          console.error("sso-idp: misbehave replay without an earlier code exchange; sending the real id_token");
          return idToken;
        }
        return state.previousIdToken;
      default:
        return idToken;
    }
  }

  const tokenPath = new URL(provider.urlFor("token")).pathname;

  // Record /token requests and apply the misbehaviour to authorization_code responses.
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path !== tokenPath || ctx.method !== "POST") return;
    const fields = { ...(ctx.oidc?.body ?? {}) };
    if ("client_secret" in fields) fields.client_secret = "***";
    const authz = ctx.get("authorization");
    let basicClientId = null;
    if (/^basic /i.test(authz)) {
      const decoded = Buffer.from(authz.slice(6).trim(), "base64").toString("utf8");
      basicClientId = decodeURIComponent(decoded.split(":")[0].replace(/\+/g, "%20"));
    }
    const record = {
      fields,
      client_auth: basicClientId !== null ? "client_secret_basic" : ctx.oidc?.body?.client_secret ? "client_secret_post" : "none",
      basic_client_id: basicClientId,
      status: ctx.status,
      error: ctx.body && typeof ctx.body === "object" ? ctx.body.error ?? null : null,
      id_token_mode: null,
    };
    const body = ctx.body;
    if (ctx.status === 200 && body && typeof body === "object" && body.id_token && fields.grant_type === "authorization_code") {
      const original = body.id_token;
      if (state.mode) {
        ctx.body = { ...body, id_token: tamper(original, state.mode) };
        record.id_token_mode = state.mode;
      }
      state.previousIdToken = original;
    }
    state.tokenRequests.push(record);
    if (state.tokenRequests.length > 100) state.tokenRequests.shift();
  });

  const providerCallback = provider.callback();

  // -- interaction pages -----------------------------------------------------

  function loginPage(res, uid, { error, loginHint } = {}) {
    const err = error ? `<p id="login-error" class="error">${esc(error)}</p>\n` : "";
    sendHtml(res, 200, "Sign in", `${err}<form id="login-form" method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
  <p><label for="login">Username</label> <input id="login" name="login" type="text" required autofocus value="${esc(loginHint ?? "")}"></p>
  <p><label for="password">Password</label> <input id="password" name="password" type="password"></p>
  <p><button id="sign-in" type="submit">Sign in</button></p>
</form>
<p>Users: alice, bob, carol (any password).</p>`);
  }

  function consentPage(res, uid, details, clientId) {
    const scopes = [...(details.missingOIDCScope ?? [])];
    const items = scopes.map((s) => `<li>${esc(s)}</li>`).join("");
    sendHtml(res, 200, "Authorize", `<p>The application <strong id="client-id">${esc(clientId)}</strong> asks for:</p>
<ul id="scopes">${items}</ul>
<form id="consent-form" method="post" action="/interaction/${esc(uid)}/confirm">
  <button id="approve" type="submit">Allow</button>
</form>
<form id="deny-form" method="post" action="/interaction/${esc(uid)}/abort">
  <button id="deny" type="submit">Deny</button>
</form>`);
  }

  async function interaction(req, res, uid, action) {
    let details;
    try {
      details = await provider.interactionDetails(req, res);
    } catch (err) {
      return sendHtml(res, 400, "Sign-in session expired", `<p id="interaction-error">${esc(err.message)}</p>`);
    }
    if (details.uid !== uid) {
      return sendHtml(res, 400, "Sign-in session mismatch", `<p id="interaction-error">this page belongs to another sign-in</p>`);
    }
    const { prompt, params } = details;

    if (action === "" && req.method === "GET") {
      if (prompt.name === "login") return loginPage(res, uid, { loginHint: params.login_hint });
      if (prompt.name === "consent") return consentPage(res, uid, prompt.details, params.client_id);
      return sendHtml(res, 501, "Not implemented", `<p>prompt ${esc(prompt.name)}</p>`);
    }
    if (req.method !== "POST") return sendHtml(res, 405, "Method not allowed", "");
    const form = new URLSearchParams(await readBody(req));

    if (action === "login") {
      if (prompt.name !== "login") return sendHtml(res, 400, "Unexpected sign-in step", `<p>expected ${esc(prompt.name)}</p>`);
      const login = (form.get("login") ?? "").trim();
      const user = USERS[login];
      if (!user) return loginPage(res, uid, { error: `Unknown user "${login}".`, loginHint: login });
      return provider.interactionFinished(req, res, { login: { accountId: user.sub } }, { mergeWithLastSubmission: false });
    }
    if (action === "confirm") {
      if (prompt.name !== "consent") return sendHtml(res, 400, "Unexpected sign-in step", `<p>expected ${esc(prompt.name)}</p>`);
      const { grantId, session } = details;
      const grant = grantId
        ? await provider.Grant.find(grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      const d = prompt.details;
      if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(" "));
      if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
      if (d.missingResourceScopes) {
        for (const [indicator, scope] of Object.entries(d.missingResourceScopes)) grant.addResourceScope(indicator, scope.join(" "));
      }
      const saved = await grant.save();
      return provider.interactionFinished(req, res, { consent: { grantId: saved } }, { mergeWithLastSubmission: true });
    }
    if (action === "abort") {
      return provider.interactionFinished(
        req,
        res,
        { error: "access_denied", error_description: "End-User aborted interaction" },
        { mergeWithLastSubmission: false },
      );
    }
    return sendHtml(res, 404, "Not found", "");
  }

  // -- control endpoints -----------------------------------------------------

  async function control(req, res, path) {
    const post = req.method === "POST";
    let body = {};
    if (post) {
      try {
        const raw = await readBody(req);
        body = raw ? JSON.parse(raw) : {};
      } catch {
        return sendJson(res, 400, { error: "body must be JSON" });
      }
      if (!body || typeof body !== "object") return sendJson(res, 400, { error: "body must be a JSON object" });
    }
    if (path === "/__control/redirect_uris") {
      if (post) {
        const uris = body.redirect_uris;
        if (!Array.isArray(uris) || !uris.every((u) => typeof u === "string" && URL.canParse(u))) {
          return sendJson(res, 400, { error: "redirect_uris must be an array of absolute URLs" });
        }
        state.redirectUris = [...uris];
      }
      return sendJson(res, 200, { redirect_uris: state.redirectUris });
    }
    if (path === "/__control/misbehave") {
      if (post) {
        const mode = body.mode ?? null;
        if (mode !== null && !MISBEHAVIOURS.has(mode)) {
          return sendJson(res, 400, { error: `mode must be null or one of ${[...MISBEHAVIOURS].join(", ")}` });
        }
        state.mode = mode;
      }
      return sendJson(res, 200, { mode: state.mode });
    }
    if (path === "/__control/down") {
      if (post) {
        if (typeof body.down !== "boolean") return sendJson(res, 400, { error: "down must be true or false" });
        state.down = body.down;
      }
      return sendJson(res, 200, { down: state.down });
    }
    if (path === "/__control/last_token_request" && !post) {
      return sendJson(res, 200, state.tokenRequests.at(-1) ?? null);
    }
    if (path === "/__control/token_requests" && !post) {
      return sendJson(res, 200, state.tokenRequests);
    }
    return sendJson(res, 404, { error: `no control endpoint ${req.method} ${path}` });
  }

  handler = async (req, res) => {
    const path = new URL(req.url, issuer).pathname;
    if (path.startsWith("/__control/")) return control(req, res, path);
    if (state.down) {
      res.writeHead(503, { "content-type": "text/plain", "retry-after": "1" });
      return res.end("identity provider unavailable (down by /__control/down)\n");
    }
    const m = /^\/interaction\/([^/]+)(?:\/(login|confirm|abort))?\/?$/.exec(path);
    if (m) return interaction(req, res, m[1], m[2] ?? "");
    return providerCallback(req, res);
  };
  console.log(`sso-idp listening issuer=${issuer}`);
});

server.on("error", (err) => {
  console.error(`sso-idp: cannot listen on 127.0.0.1:${opts.port}: ${err.message}`);
  process.exit(1);
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
