// Signs a demo user in through the full Authorization Code + PKCE flow, over HTTP exactly as a
// browser would (redirects, cookies, the login form), and prints the access token on stdout.
//
//   node demo/idp/login.mjs --issuer http://127.0.0.1:9100 --user alice [--groups a,b] [--password demo]
import { createHash, randomBytes } from 'node:crypto';

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const issuer = arg('issuer', 'http://127.0.0.1:9100');
const user = arg('user', 'alice');
const password = arg('password', 'demo');
const groups = arg('groups', '');
const redirectUri = 'http://127.0.0.1:53682/callback';
const b64url = (buf) => buf.toString('base64url');

const jar = new Map();
function remember(res) {
  for (const line of res.headers.getSetCookie()) {
    const [pair] = line.split(';');
    const eq = pair.indexOf('=');
    jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1));
  }
}
const cookies = () => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');

async function go(url, init = {}) {
  const res = await fetch(url, { ...init, redirect: 'manual', headers: { ...(init.headers || {}), cookie: cookies() } });
  remember(res);
  return res;
}

async function main() {
  const discovery = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
  const verifier = b64url(randomBytes(32));
  const state = b64url(randomBytes(16));
  const auth = new URL(discovery.authorization_endpoint);
  auth.search = new URLSearchParams({
    client_id: 'claude-code', response_type: 'code', redirect_uri: redirectUri,
    scope: 'openid email profile groups offline_access', state,
    code_challenge: b64url(createHash('sha256').update(verifier).digest()), code_challenge_method: 'S256',
  });
  let res = await go(auth);
  let location = res.headers.get('location');
  let code;
  for (let hops = 0; hops < 10 && location; hops += 1) {
    const next = new URL(location, issuer);
    if (next.href.startsWith(redirectUri)) {
      if (next.searchParams.get('state') !== state) throw new Error('state mismatch');
      if (next.searchParams.get('error')) {
        throw new Error(`sign-in refused: ${next.searchParams.get('error')}: ${next.searchParams.get('error_description')}`);
      }
      code = next.searchParams.get('code');
      break;
    }
    res = await go(next);
    if (res.status === 200 && next.pathname.startsWith('/interaction/')) {
      const html = await res.text();
      const action = html.match(/action="([^"]+)"/)?.[1];
      if (!action) throw new Error('no login form');
      res = await go(new URL(action, issuer), {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ login: user, password, groups }),
      });
      if (res.status === 200) throw new Error(`login failed for ${user}: unknown user or wrong password`);
    }
    location = res.headers.get('location');
  }
  if (!code) throw new Error(`no authorization code (last status ${res.status})`);
  const tokenRes = await fetch(discovery.token_endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, client_id: 'claude-code', code_verifier: verifier }),
  });
  const tokens = await tokenRes.json();
  if (!tokens.access_token) throw new Error(`token request failed: ${JSON.stringify(tokens)}`);
  process.stdout.write(`${tokens.access_token}\n`);
}

main().catch((err) => { process.stderr.write(`login: ${err.message}\n`); process.exit(1); });
