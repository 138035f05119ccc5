// Signs a demo user in at the demo IdP over HTTP exactly as a browser would (redirects,
// cookies, the login form). Three modes:
//
//   node login.mjs --issuer URL --user alice [--groups a,b]   full code + PKCE flow; prints the access token
//   node login.mjs --browse URL --user alice                  be the browser for a sign-in URL another
//                                                             program opened (its loopback redirect is followed)
//   node login.mjs --issuer URL --device CODE --user alice    approve a device-flow user code
import { createHash, randomBytes } from 'node:crypto';

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const user = arg('user', process.env.DEMO_LOGIN_USER || 'alice');
const password = arg('password', 'demo');
const groups = arg('groups', '');
const browse = arg('browse');
const deviceCode = arg('device');
const issuer = arg('issuer', browse ? new URL(browse).origin : 'http://127.0.0.1:9100');
const b64url = (buf) => buf.toString('base64url');

// fetch() to the IdP: when nothing answers there, says so (fetch itself says only "fetch failed").
async function idp(url, init) {
  try {
    return await fetch(url, init);
  } catch (err) {
    if (!(err instanceof TypeError)) throw err;
    const why = err.cause?.code || err.cause?.message || err.message;
    throw new Error(`no IdP at ${issuer} (${why}): is \`make demo\` running?`);
  }
}

const jar = new Map();
const cookies = () => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
async function go(url, init = {}) {
  const res = await idp(url, { ...init, redirect: 'manual', headers: { ...(init.headers || {}), cookie: cookies() } });
  for (const line of res.headers.getSetCookie()) {
    const [pair] = line.split(';');
    const eq = pair.indexOf('=');
    jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1));
  }
  return res;
}
const postForm = (url, fields) => go(url, {
  method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(fields),
});
const hidden = (html, name) => html.match(new RegExp(`name="${name}" value="([^"]*)"`))?.[1];

// Follows the IdP's pages from `url`: answers login forms, and returns the first URL the IdP
// redirects to outside itself (the client's redirect), or null when it ends on a page.
async function drive(url) {
  let res = await go(url);
  for (let hops = 0; hops < 15; hops += 1) {
    const location = res.headers.get('location');
    if (location) {
      const next = new URL(location, issuer);
      if (next.origin !== issuer) return next;
      res = await go(next);
      continue;
    }
    const html = await res.text();
    const action = html.match(/action="([^"]*\/interaction\/[^"]*\/login)"/)?.[1];
    if (!action) return null;
    if (html.includes('role="alert"')) throw new Error(`login failed for ${user}: unknown user or wrong password`);
    res = await postForm(new URL(action, issuer), { login: user, password, groups });
    if (res.status === 200) {
      const again = await res.text();
      if (again.includes('role="alert"')) throw new Error(`login failed for ${user}: unknown user or wrong password`);
      return null;
    }
  }
  throw new Error('too many redirects');
}

async function codeFlow() {
  const found = await idp(`${issuer}/.well-known/openid-configuration`);
  if (!found.ok) throw new Error(`${issuer} answered ${found.status} to OpenID discovery: is \`make demo\`'s IdP the one there?`);
  const discovery = await found.json();
  const redirectUri = 'http://127.0.0.1:53682/callback';
  const verifier = b64url(randomBytes(32));
  const state = b64url(randomBytes(16));
  const auth = new URL(discovery.authorization_endpoint);
  auth.search = new URLSearchParams({
    client_id: 'claude-code', response_type: 'code', redirect_uri: redirectUri,
    scope: 'openid email profile groups offline_access', state,
    code_challenge: b64url(createHash('sha256').update(verifier).digest()), code_challenge_method: 'S256',
  });
  const back = await drive(auth);
  if (!back) throw new Error('the IdP did not redirect back');
  if (back.searchParams.get('state') !== state) throw new Error('state mismatch');
  if (back.searchParams.get('error')) {
    throw new Error(`sign-in refused: ${back.searchParams.get('error')}: ${back.searchParams.get('error_description')}`);
  }
  const res = await idp(discovery.token_endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code: back.searchParams.get('code'),
      redirect_uri: redirectUri, client_id: 'claude-code', code_verifier: verifier }),
  });
  const tokens = await res.json();
  if (!tokens.access_token) throw new Error(`token request failed: ${JSON.stringify(tokens)}`);
  process.stdout.write(`${tokens.access_token}\n`);
}

async function browserFor(url) {
  const back = await drive(url);
  if (!back) throw new Error('the IdP did not redirect back to the client');
  await fetch(back); // the client's loopback listener
}

async function approveDevice(code) {
  let res = await go(`${issuer}/device`);
  res = await postForm(`${issuer}/device`, { xsrf: hidden(await res.text(), 'xsrf'), user_code: code });
  const confirm = await res.text();
  res = await postForm(`${issuer}/device`, { xsrf: hidden(confirm, 'xsrf'), user_code: code, confirm: 'yes' });
  const location = res.headers.get('location');
  if (!location) throw new Error('device code not accepted');
  await drive(new URL(location, issuer));
}

const main = browse ? () => browserFor(browse) : deviceCode ? () => approveDevice(deviceCode) : codeFlow;
main().catch((err) => { process.stderr.write(`login: ${err.message}\n`); process.exit(1); });
