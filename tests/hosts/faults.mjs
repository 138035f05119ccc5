// The built filter under a minimal Proxy-Wasm host (Node's V8) that misbehaves the way a host
// other than Envoy or nginx may: a clock that fails, header writes refused, no property store, an
// empty final body callback, empty answers for unknown properties, two configurations (other
// IdPs) in one VM, a reconfiguration while a key fetch is out, no timer, a huge callout answer. Prints one JSON object of what the
// filter did; tests/test_host_faults.py asserts it fails closed.
//   node tests/hosts/faults.mjs WASM SCENARIO
import { readFileSync } from "node:fs";
import { WASI } from "node:wasi";
import crypto from "node:crypto";

const [wasmPath, scenario] = process.argv.slice(2);
const enc = new TextEncoder(), dec = new TextDecoder();
const S = { Ok: 0, NotFound: 1, BadArgument: 2, CasMismatch: 8, Unimplemented: 12 };
const M = { Req: 0, Resp: 2, Call: 6 };
const B = { ReqBody: 0, RespBody: 1, CallBody: 4, Plugin: 7 };
let ex, memory;
const mem8 = () => new Uint8Array(memory.buffer), view = () => new DataView(memory.buffer);
const str = (p, l) => dec.decode(mem8().subarray(p, p + l)), bytes = (p, l) => mem8().slice(p, p + l);
function give(b, rp, rs) {
  const p = b.length ? ex.proxy_on_memory_allocate(b.length) : 0;
  if (b.length) mem8().set(b, p);
  view().setUint32(rp, p, true); view().setUint32(rs, b.length, true); return S.Ok;
}
function ser(pairs) {
  const parts = pairs.map(([k, v]) => [enc.encode(k), enc.encode(v)]);
  let size = 4 + parts.length * 8; for (const [k, v] of parts) size += k.length + v.length + 2;
  const out = new Uint8Array(size), dv = new DataView(out.buffer); dv.setUint32(0, parts.length, true);
  let at = 4; for (const [k, v] of parts) { dv.setUint32(at, k.length, true); dv.setUint32(at + 4, v.length, true); at += 8; }
  for (const [k, v] of parts) { out.set(k, at); at += k.length + 1; out.set(v, at); at += v.length + 1; }
  return out;
}
function deser(b) {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength), n = dv.getUint32(0, true), sz = [];
  let at = 4; for (let i = 0; i < n; i++, at += 8) sz.push([dv.getUint32(at, true), dv.getUint32(at + 4, true)]);
  const out = []; for (const [k, v] of sz) { const key = dec.decode(b.subarray(at, at + k)); at += k + 1; out.push([key, dec.decode(b.subarray(at, at + v))]); at += v + 1; }
  return out;
}
const faults = new Set(scenario.split("+"));
const unimplemented = [];
const st = { now: BigInt(Date.now()) * 1000000n, maps: { 0: [], 2: [], 6: [] }, bufs: {}, shared: new Map(), cas: 1,
  calls: [], tok: 1, reply: null, logs: [], metrics: [], counted: {}, ticks: null, props: {} };
const host = {
  proxy_log(l, p, n) { st.logs.push([l, str(p, n)]); return S.Ok; },
  proxy_get_current_time_nanoseconds(r) { if (faults.has("clock")) return S.Unimplemented; view().setBigUint64(r, st.now, true); return S.Ok; },
  proxy_set_tick_period_milliseconds(ms) { if (faults.has("notick")) return S.Unimplemented; st.ticks = ms; return S.Ok; },
  proxy_get_buffer_bytes(t, s, m, rp, rs) { if (t === B.ReqBody) st.bodyReads = (st.bodyReads || 0) + 1; const b = st.bufs[t]; if (!b) return S.NotFound; return give(b.subarray(s >>> 0, Math.min(b.length, (s >>> 0) + (m >>> 0))), rp, rs); },
  proxy_set_buffer_bytes(t, s, size, p, l) { st.bufs[t] = bytes(p, l); return S.Ok; },
  proxy_get_header_map_pairs(t, rp, rs) { return give(ser(st.maps[t] || []), rp, rs); },
  proxy_get_header_map_value(t, kp, kl, rp, rs) { const k = str(kp, kl).toLowerCase(); const h = (st.maps[t] || []).find(([n]) => n.toLowerCase() === k); return h ? give(enc.encode(h[1]), rp, rs) : S.NotFound; },
  proxy_replace_header_map_value(t, kp, kl, vp, vl) { if (t === 0 && st.headersGone) return S.BadArgument; const k = str(kp, kl).toLowerCase(); st.maps[t] = (st.maps[t] || []).filter(([n]) => n.toLowerCase() !== k); st.maps[t].push([k, str(vp, vl)]); return S.Ok; },
  proxy_remove_header_map_value(t, kp, kl) { if (t === 0 && st.headersGone) return S.BadArgument; const k = str(kp, kl).toLowerCase(); st.maps[t] = (st.maps[t] || []).filter(([n]) => n.toLowerCase() !== k); return S.Ok; },
  proxy_get_property(pp, pl, rp, rs) { if (faults.has("emptyprop")) { const p = ex.proxy_on_memory_allocate(1); view().setUint32(rp, p, true); view().setUint32(rs, 0, true); return S.Ok; } const k = str(pp, pl).replaceAll("\0", "."); if (k in st.props) return give(enc.encode(st.props[k]), rp, rs); return S.NotFound; },
  proxy_set_property(pp, pl, vp, vl) { st.setprops = (st.setprops || 0) + 1; return faults.has("noprop") ? S.NotFound : S.Ok; },
  proxy_get_shared_data(kp, kl, rp, rs, rc) { const e = st.shared.get(str(kp, kl)); if (!e) return S.NotFound; give(e.v, rp, rs); view().setUint32(rc, e.cas, true); return S.Ok; },
  proxy_set_shared_data(kp, kl, vp, vl, cas) { const k = str(kp, kl), e = st.shared.get(k); if (cas !== 0 && e && e.cas !== cas) return S.CasMismatch; st.shared.set(k, { v: bytes(vp, vl), cas: st.cas++ }); return S.Ok; },
  proxy_define_metric(t, np, nl, r) { st.metrics.push(str(np, nl)); view().setUint32(r, st.metrics.length, true); return S.Ok; },
  proxy_increment_metric(id, by) { const name = st.metrics[id - 1]; st.counted[name] = (st.counted[name] || 0) + Number(by); return S.Ok; },
  proxy_record_metric() { return S.Ok; },
  proxy_send_local_response(status, dp, dl, bp, bl) { st.reply = { status, body: str(bp, bl) }; return S.Ok; },
  proxy_continue_stream() { st.resumed = true; return S.Ok; },
  proxy_http_call(up, ul, hp, hl, bp, bl, tp, tl, to, rt) { const h = deser(bytes(hp, hl)); const t = st.tok++;
    st.calls.push({ t, path: h.find(([k]) => k === ":path")[1], auth: h.find(([k]) => k === ":authority")[1], up: str(up, ul) });
    view().setUint32(rt, t, true); return S.Ok; },
  proxy_set_effective_context() { return S.Ok; },
  proxy_done() { return S.Ok; },
};
const wasi = new WASI({ version: "preview1", env: {}, args: [] });
const wasiImport = { ...wasi.wasiImport };
if (faults.has("random")) wasiImport.random_get = () => 52; // ENOSYS
if (faults.has("noenv")) { wasiImport.environ_sizes_get = () => 52; wasiImport.environ_get = () => 52; wasiImport.proc_exit = (c) => { throw new Error(`proc_exit(${c})`); }; }
const mod = await WebAssembly.compile(readFileSync(wasmPath));
const env = {};
for (const i of WebAssembly.Module.imports(mod)) if (i.module === "env")
  env[i.name] = host[i.name] || ((...a) => { unimplemented.push(i.name); return S.Unimplemented; });
const inst = await WebAssembly.instantiate(mod, { env, wasi_snapshot_preview1: wasiImport });
ex = inst.exports; memory = ex.memory; wasi.initialize(inst);

// --- IdPs: Ed25519 keys, JWKS, tokens.
function idp(name) {
  const { publicKey, privateKey } = crypto.generateKeyPairSync("ed25519");
  const jwk = publicKey.export({ format: "jwk" });
  return { iss: `https://${name}.example`, name, priv: privateKey,
    jwks: JSON.stringify({ keys: [{ kty: "OKP", crv: "Ed25519", kid: "k1", x: jwk.x }] }) };
}
const b64 = (o) => Buffer.from(typeof o === "string" ? o : JSON.stringify(o)).toString("base64url");
function sign(who, claims) {
  const input = `${b64({ alg: "EdDSA", typ: "JWT", kid: "k1" })}.${b64(claims)}`;
  return `${input}.${crypto.sign(null, Buffer.from(input), who.priv).toString("base64url")}`;
}
const config = (who) => enc.encode(JSON.stringify({
  oidc: { issuer: who.iss, audiences: ["gw"], upstream: `${who.name}.example:443` },
  targets: { anthropic: { provider: "anthropic", api_key: "sk-provider" } },
  models: [{ alias: "claude-sonnet-4-6", target: "anthropic", model_id: "claude-sonnet-4-6" }],
  tiers: [{ name: "standard", groups: ["standard"], models: ["claude-sonnet-4-6"] }],
}));
const call = (n, ...a) => ex[n](...a);
function configure(root, who) { st.bufs[B.Plugin] = config(who); return call("proxy_on_configure", root, st.bufs[B.Plugin].length); }
const answered = [];
function answer(root, idps) { // answer callouts by authority
  while (st.calls.length) { const c = st.calls.shift(); answered.push(c.auth + c.path); const who = idps.find((w) => c.auth === `${w.name}.example`);
    const body = c.path.includes("openid-configuration") ? JSON.stringify({ issuer: who.iss, jwks_uri: `${who.iss}/keys` }) : who.jwks;
    st.maps[M.Call] = [[":status", "200"]]; st.bufs[B.CallBody] = enc.encode(body);
    call("proxy_on_http_call_response", root, c.t, 1, body.length, 0); }
}
let ctx = 100;
// `idps`: answer the key callouts the request makes itself, while it waits for them.
function request(root, token, idps = null) {
  const id = ctx++; st.reply = null;
  const body = enc.encode(JSON.stringify({ model: "claude-sonnet-4-6", max_tokens: 5, messages: [] }));
  st.maps[M.Req] = [[":method", "POST"], [":path", "/v1/messages"], [":authority", "gw"], ["content-type", "application/json"],
    ["authorization", `Bearer ${token}`], ["content-length", String(body.length)]];
  st.bufs[B.ReqBody] = body;
  call("proxy_on_context_create", id, root);
  const h = call("proxy_on_request_headers", id, st.maps[M.Req].length, 0);
  if (idps) while (st.calls.length) answer(id, idps);
  if (faults.has("headersgone")) st.headersGone = true;
  let b;
  if (faults.has("emptyeos") && !st.reply) { b = [call("proxy_on_request_body", id, body.length, 0)];
    if (!st.reply) b.push(call("proxy_on_request_body", id, 0, 1)); }   // final empty callback, size of THIS callback
  else b = st.reply ? null : call("proxy_on_request_body", id, body.length, 1);
  st.headersGone = false;
  const out = { headers_action: h, body_action: b, reply: st.reply && `${st.reply.status} ${st.reply.body.slice(0, 90)}`,
    upstream_x_api_key: (st.maps[M.Req].find(([k]) => k === "x-api-key") || [])[1],
    upstream_user: (st.maps[M.Req].find(([k]) => k === "x-authenticated-user") || [])[1] };
  st.maps[M.Resp] = [[":status", "200"], ["content-type", "application/json"]];
  if (!st.reply) { call("proxy_on_response_headers", id, 2, 0); const r = enc.encode('{"usage":{"input_tokens":1,"output_tokens":1}}');
    st.bufs[B.RespBody] = r; call("proxy_on_response_body", id, r.length, 1); }
  call("proxy_on_log", id); call("proxy_on_done", id); call("proxy_on_delete", id);
  return out;
}
const fetchedBy2 = [];
const nowS = () => Number(st.now / 1000000000n);
const tick = (root) => { call("proxy_on_tick", root); st.now += 1000000000n; };
const warn = () => st.logs.filter(([l]) => l >= 3).map(([, m]) => m.slice(0, 140));

const good = (who, sub = "alice") => sign(who, { iss: who.iss, aud: "gw", sub, groups: ["standard"], exp: nowS() + 600 });
function ready(who) {
  call("proxy_on_context_create", 1, 0);
  call("proxy_on_vm_start", 1, 0);
  const configured = configure(1, who);
  for (let i = 0; i < 3; i++) { tick(1); answer(1, [who]); }
  return configured;
}
const out = { scenario };
try {
  if (faults.has("headersgone")) {
    const A = idp("idp-a");
    ready(A);
    out.request = request(1, good(A));
    out.client_authorization_left = st.maps[M.Req].some(([k, v]) => k === "authorization" && v.startsWith("Bearer "));
  } else if (faults.has("noprop")) {
    const A = idp("idp-a");
    ready(A);
    for (let i = 0; i < 3; i++) request(1, good(A));
    request(1, "garbage");
    out.property_attempts = st.setprops;
    out.usage_lines = st.logs.filter(([, m]) => m.includes("usage {")).length;
  } else if (faults.has("ngxnouri")) {
    // nginx (by its version) that does not give the URI it will forward.
    st.props["ngx.nginx_version"] = "1.27.2";
    const A = idp("idp-a");
    ready(A);
    out.request = request(1, good(A));
    st.props["ngx.request_uri"] = "/v1/messages";
    out.with_uri = request(1, good(A));
    out.warnings = warn();
    // A refusal decided at the headers is answered at the body without reading it.
    st.bodyReads = 0;
    out.refused = request(1, "garbage");
    out.refused_body_reads = st.bodyReads;
  } else if (faults.has("emptyeos") || faults.has("emptyprop")) {
    const A = idp("idp-a");
    ready(A);
    out.request = request(1, good(A));
  } else if (faults.has("clock")) {
    const A = idp("idp-a");
    out.configured = ready(A);
    out.request = request(1, sign(A, { iss: A.iss, aud: "gw", sub: "mallory", groups: ["standard"], exp: 1000000000 }));
  } else if (faults.has("notick")) {
    // A host without a timer: the first request fetches the keys itself.
    const A = idp("idp-a");
    call("proxy_on_context_create", 1, 0);
    out.configured = configure(1, A);
    out.first = request(1, good(A), [A]);
    const later = Array.from({ length: 20 }, () => request(1, good(A)));
    out.forwarded = later.filter((r) => r.reply === null && r.upstream_x_api_key === "sk-provider").length;
    // Forwarded requests are counted per tier and model, and handed to the host in batches.
    out.requests_counted = Object.entries(st.counted).filter(([n]) => n.startsWith("claude_sso_gateway_requests_total"))
      .reduce((sum, [, v]) => sum + v, 0);
  } else if (faults.has("tworoots") || faults.has("reconfigure")) {
    const A = idp("idp-a"), Bp = idp("idp-b");
    if (faults.has("tworoots")) {
      call("proxy_on_context_create", 1, 0); configure(1, Bp);
      call("proxy_on_context_create", 2, 0); configure(2, A);
      for (let i = 0; i < 3; i++) { tick(1); answer(1, [A, Bp]); }            // B has its keys
      st.now += 5000000000n;
      for (let i = 0; i < 3; i++) { tick(2); fetchedBy2.push(...st.calls.map((c) => c.auth + c.path)); answer(2, [A, Bp]); }
      tick(1);                                                                // B may look at A's record
    } else {
      call("proxy_on_context_create", 1, 0); configure(1, A);
      tick(1); answer(1, [A, Bp]); tick(1);                                   // discovery done; JWKS(A) callout out
      out.pending = st.calls.map((c) => c.auth + c.path);
      out.reconfigured = configure(1, Bp);
      answer(1, [A, Bp]);                                                     // the old JWKS(A) answer arrives
    }
    // A forged token may take a key refetch (a signature the keys cannot verify): it goes to the
    // configuration's own IdP, answered here, and the token is refused after it.
    const two = faults.has("tworoots") ? [A, Bp] : null;
    let from = answered.length;
    out.b_forged = request(1, sign(A, { iss: Bp.iss, aud: "gw", sub: "mallory", groups: ["standard"], exp: nowS() + 600 }), two);
    out.b_forged_callouts = answered.slice(from);
    if (faults.has("tworoots")) {
      out.b_own = request(1, good(Bp, "bob"));
      from = answered.length;
      out.a_forged = request(2, sign(Bp, { iss: A.iss, aud: "gw", sub: "mallory", groups: ["standard"], exp: nowS() + 600 }), two);
      out.a_forged_callouts = answered.slice(from);
      out.a_own = request(2, good(A));
      out.fetched_by_a = fetchedBy2;
    }
    tick(1);
    out.b_next_callouts = st.calls.map((c) => c.auth + c.path);
  } else if (faults.has("hugekeys")) {
    // The IdP (or anything on the callout path) answers discovery with 64 MiB: refused without
    // the VM copying it all, since a VM's memory never shrinks.
    const A = idp("idp-a");
    call("proxy_on_context_create", 1, 0); configure(1, A);
    const before = memory.buffer.byteLength;
    tick(1);
    const c = st.calls.shift();
    const huge = new Uint8Array(64 << 20).fill(32);
    st.maps[M.Call] = [[":status", "200"]]; st.bufs[B.CallBody] = huge;
    call("proxy_on_http_call_response", 1, c.t, 1, huge.length, 0);
    out.grown_mib = (memory.buffer.byteLength - before) / 1048576;
    out.warnings = warn();
    // The IdP recovers: the keys load and a request passes.
    for (let i = 0; i < 6; i++) { st.now += 30000000000n; tick(1); answer(1, [A]); }
    out.request = request(1, good(A));
  } else {
    throw new Error(`unknown scenario ${scenario}`);
  }
} catch (e) {
  out.trap = `${e.constructor.name}: ${e.message}`;
}
out.unimplemented = unimplemented;
out.secrets_logged = st.logs.some(([, m]) => m.includes("sk-provider"));
console.log(JSON.stringify(out));
