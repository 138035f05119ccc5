// A real OpenID Provider for the demo and the tests, built on `oidc-provider` (OpenID Certified).
//
//   node demo/idp/server.mjs --port 9100      -> prints "ready http://127.0.0.1:9100" when listening
//
// Discovery, JWKS, Authorization Code + PKCE (S256, required), refresh tokens, device flow and
// revocation. Access tokens are RS256 JWTs for the audience `claude-sso-gateway` carrying `sub`,
// `email` and `groups`. Users are in USERS below (password "demo"); `mallory` is always refused.
import http from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

// stdout carries only the "ready" line; oidc-provider's own notices go to stderr.
console.log = console.info = (...args) => process.stderr.write(`${args.join(' ')}\n`);

const AUDIENCE = 'claude-sso-gateway';
// Resource indicators must be absolute URIs; the token's `aud` is still AUDIENCE.
const RESOURCE = 'urn:claude-sso-gateway';
const CLIENT_ID = 'claude-code';
const PASSWORD = 'demo';
const USERS = {
  alice: ['claude-standard-users'],
  bob: ['claude-power-users'],
  carol: [],
  erin: ['claude-standard-users', 'claude-power-users'],
  mallory: ['claude-power-users'],
};
const REFUSED = new Set(['mallory']);

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const host = arg('host', '127.0.0.1');
const requestedPort = Number(arg('port', '9100'));
const accessTtl = Number(process.env.IDP_ACCESS_TOKEN_TTL || 3600);
const refreshTtl = Number(process.env.IDP_REFRESH_TOKEN_TTL || 86400);

// Groups given at login (demo convenience for `make demo-token GROUPS=`), by account.
const groupOverrides = new Map();
let logins = 0;

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = (title, body) =>
  `<!doctype html><html><head><meta charset="utf-8"><title>${escape(title)}</title></head>` +
  `<body style="font-family:sans-serif;max-width:28em;margin:4em auto"><h1>${escape(title)}</h1>${body}</body></html>`;

function loginForm(uid, client, error) {
  return page('Sign in to Claude (demo IdP)',
    (error ? `<p role="alert" style="color:#b00">${escape(error)}</p>` : '') +
    `<p>Client: ${escape(client)}. Users: ${Object.keys(USERS).join(', ')}; password <code>demo</code>.</p>` +
    `<form method="post" action="/interaction/${escape(uid)}/login">` +
    '<label>User <input name="login" autofocus></label><br>' +
    '<label>Password <input name="password" type="password"></label><br>' +
    '<label>Groups (optional, comma-separated) <input name="groups"></label><br>' +
    '<button type="submit">Sign in</button></form>');
}

function readForm(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.on('data', (c) => { data += c; if (data.length > 65536) reject(new Error('form too large')); });
    req.on('end', () => resolve(Object.fromEntries(new URLSearchParams(data))));
    req.on('error', reject);
  });
}

function signingKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: `demo-${Date.now().toString(36)}`, alg: 'RS256', use: 'sig' };
}

const SCOPE = 'openid email profile groups offline_access';

function buildProvider(issuer) {
  const scope = SCOPE;
  return new Provider(issuer, {
    clients: [{
      client_id: CLIENT_ID,
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      redirect_uris: ['http://127.0.0.1/callback', 'http://localhost/callback'],
      grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
    }],
    jwks: { keys: [signingKey()] },
    pkce: { required: () => true },
    scopes: scope.split(' '),
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
    features: {
      devInteractions: { enabled: false },
      deviceFlow: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({ scope: 'claude', audience: AUDIENCE, accessTokenFormat: 'jwt', accessTokenTTL: accessTtl }),
      },
    },
    // Grant and session outlive a short refresh token by at least a minute: with both at 1 s (the
    // tests' expired-refresh case) a login that crossed a second boundary lost its grant mid-way.
    ttl: { AccessToken: accessTtl, RefreshToken: refreshTtl, IdToken: accessTtl, DeviceCode: 600, Interaction: 600,
           Grant: Math.max(refreshTtl, 60), Session: Math.max(refreshTtl, 60) },
    rotateRefreshToken: true,
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    findAccount: async (ctx, id) => (USERS[id] === undefined ? undefined : {
      accountId: id,
      claims: async () => ({ sub: id, email: `${id}@example.com`, email_verified: true, name: id, groups: groupsOf(id) }),
    }),
    extraTokenClaims: async (ctx, token) => (token.accountId ? { email: `${token.accountId}@example.com`, groups: groupsOf(token.accountId) } : {}),
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = page('Sign-in error', `<p>${escape(out.error)}: ${escape(out.error_description || '')}</p>`);
    },
  });
}

function groupsOf(id) {
  return groupOverrides.get(id) ?? USERS[id] ?? [];
}

async function interaction(provider, req, res) {
  const url = new URL(req.url, 'http://x');
  const [, , uid, action] = url.pathname.split('/');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new errors.SessionNotFound('interaction mismatch');
  if (details.prompt.name === 'consent') {
    // First-party client: consent (which oidc-provider always asks of native clients) is given.
    const { Grant } = provider;
    const grant = details.grantId
      ? await Grant.find(details.grantId)
      : new Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    grant.addOIDCScope(SCOPE);
    grant.addOIDCClaims(['email', 'groups']);
    grant.addResourceScope(RESOURCE, 'claude');
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  if (req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    return res.end(loginForm(uid, details.params.client_id));
  }
  if (req.method === 'POST' && action === 'login') {
    const form = await readForm(req);
    const login = (form.login || '').trim();
    if (REFUSED.has(login)) {
      return provider.interactionFinished(req, res,
        { error: 'access_denied', error_description: `user ${login} may not sign in` }, { mergeWithLastSubmission: false });
    }
    if (USERS[login] === undefined || form.password !== PASSWORD) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      return res.end(loginForm(uid, details.params.client_id, 'Unknown user or wrong password.'));
    }
    const groups = (form.groups || '').split(',').map((g) => g.trim()).filter(Boolean);
    if (groups.length) groupOverrides.set(login, groups); else groupOverrides.delete(login);
    logins += 1;
    process.stderr.write(`idp: login ${login} (${logins} in all)\n`);
    return provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
  }
  res.writeHead(405).end();
}

async function main() {
  const server = http.createServer();
  // A port already taken is said in one line, not as an unhandled 'error' event's stack trace.
  await new Promise((resolve, reject) => {
    const refused = (err) => reject(Object.assign(new Error(err.code === 'EADDRINUSE'
      ? `cannot listen on ${host}:${requestedPort}: the port is in use (another \`make demo\`, \`make compose-up\` or test run?)`
      : `cannot listen on ${host}:${requestedPort}: ${err.message}`), { plain: true }));
    server.once('error', refused);
    server.listen(requestedPort, host, () => { server.off('error', refused); resolve(); });
  });
  const issuer = `http://${host}:${server.address().port}`;
  const provider = buildProvider(issuer);
  provider.on('server_error', (ctx, err) => process.stderr.write(`idp: server error: ${err.stack}\n`));
  const callback = provider.callback();
  server.on('request', (req, res) => {
    if (req.url === '/__demo/logins') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ logins }));
    }
    if (req.url.startsWith('/interaction/')) {
      return interaction(provider, req, res).catch((err) => {
        res.writeHead(400, { 'content-type': 'text/html; charset=utf-8' });
        res.end(page('Sign-in error', `<p>${escape(err.message)}</p>`));
      });
    }
    return callback(req, res);
  });
  process.stdout.write(`ready ${issuer}\n`);
}

main().catch((err) => { process.stderr.write(`idp: ${err.plain ? err.message : err.stack}\n`); process.exit(1); });
