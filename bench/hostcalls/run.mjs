// The filter's .wasm under a minimal Proxy-Wasm host written in JavaScript (V8, as in Envoy):
// counts every host call one request makes, by function and by callback, and times each
// callback of the request, split into the filter's own time in the VM and this host's time in
// its host calls (timed around each call; the cost of timing is measured and taken off). The
// stand-in host is no measure of a real one: what each call costs in Envoy comes on top of the
// filter's own time (`make bench` measures that).
//
//   node bench/hostcalls/run.mjs SCENARIO.json
//
// The scenario (bench/hostcalls.py writes it): {wasm, config, env, callouts: {path: {status,
// body}}, request: {headers, body}, response: {headers, chunks}, requests, batches}. Output: one
// JSON object on stdout.
import { readFileSync } from "node:fs";
import { WASI } from "node:wasi";

const scenario = JSON.parse(readFileSync(process.argv[2], "utf8"));
const enc = new TextEncoder();
const dec = new TextDecoder();

const Status = { Ok: 0, NotFound: 1, BadArgument: 2, Empty: 7, CasMismatch: 8, Unimplemented: 12 };
const Map = { RequestHeaders: 0, RequestTrailers: 1, ResponseHeaders: 2, ResponseTrailers: 3, CallHeaders: 6, CallTrailers: 7 };
const Buffer = { RequestBody: 0, ResponseBody: 1, CallBody: 4, VmConfiguration: 6, PluginConfiguration: 7 };

let exports;
let memory;
const mem8 = () => new Uint8Array(memory.buffer);
const view = () => new DataView(memory.buffer);
const readStr = (ptr, len) => dec.decode(mem8().subarray(ptr, ptr + len));
const readBytes = (ptr, len) => mem8().slice(ptr, ptr + len);

// Copies bytes into memory the filter allocates (it frees them) and writes pointer and size.
function give(bytes, retPtr, retSize) {
    const ptr = bytes.length ? exports.proxy_on_memory_allocate(bytes.length) : 0;
    if (bytes.length) mem8().set(bytes, ptr);
    view().setUint32(retPtr, ptr, true);
    view().setUint32(retSize, bytes.length, true);
    return Status.Ok;
}

// Maps are replaced, never changed in place, so a map's serialized form can be kept.
const serialized = new WeakMap();
function serializeMap(pairs) {
    let out = serialized.get(pairs);
    if (!out) serialized.set(pairs, out = serializeFresh(pairs));
    return out;
}

function serializeFresh(pairs) {
    const parts = pairs.map(([k, v]) => [enc.encode(k), enc.encode(v)]);
    let size = 4 + parts.length * 8;
    for (const [k, v] of parts) size += k.length + v.length + 2;
    const out = new Uint8Array(size);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, parts.length, true);
    let at = 4;
    for (const [k, v] of parts) {
        dv.setUint32(at, k.length, true);
        dv.setUint32(at + 4, v.length, true);
        at += 8;
    }
    for (const [k, v] of parts) {
        out.set(k, at); at += k.length + 1;
        out.set(v, at); at += v.length + 1;
    }
    return out;
}

function deserializeMap(bytes) {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const n = dv.getUint32(0, true);
    const sizes = [];
    let at = 4;
    for (let i = 0; i < n; i++, at += 8) sizes.push([dv.getUint32(at, true), dv.getUint32(at + 4, true)]);
    const pairs = [];
    for (const [k, v] of sizes) {
        const key = dec.decode(bytes.subarray(at, at + k)); at += k + 1;
        const value = dec.decode(bytes.subarray(at, at + v)); at += v + 1;
        pairs.push([key, value]);
    }
    return pairs;
}

// The host's state.
const state = {
    now: BigInt(Date.now()) * 1000000n,
    maps: { [Map.RequestHeaders]: [], [Map.ResponseHeaders]: [], [Map.CallHeaders]: [] },
    buffers: { [Buffer.RequestBody]: new Uint8Array(), [Buffer.ResponseBody]: new Uint8Array(),
               [Buffer.CallBody]: new Uint8Array(), [Buffer.PluginConfiguration]: enc.encode(JSON.stringify(scenario.config)) },
    shared: new globalThis.Map(),  // key -> {value, cas}
    casNext: 1,
    calls: [],  // dispatched callouts: {token, path}
    tokenNext: 1,
    reply: null,
    logs: [],
    metrics: [],
};

// Every host call is counted under its name and the callback it came from (cheaply: the
// counting must not dominate the times).
const CALLBACKS = ["start", "request_headers", "request_body", "response_headers", "response_body", "log_done", "between"];
const callNames = [];
let counters = new Uint32Array(0);
let callback = 0;
const at = (name) => CALLBACKS.indexOf(name);
// This stand-in host's own time inside the host calls (decoding names, copying maps and buffers):
// more than half of a callback's time here, and no measure of what Envoy's calls cost. Timed
// requests add it up so that it can be told apart from the filter's own time in the VM.
let timingHost = false;
let hostMs = 0;

const host = {
    proxy_log(level, ptr, len) { state.logs.push([level, readStr(ptr, len)]); return Status.Ok; },
    proxy_get_log_level(ret) { view().setUint32(ret, 2, true); return Status.Ok; },
    proxy_get_current_time_nanoseconds(ret) { view().setBigUint64(ret, state.now, true); return Status.Ok; },
    proxy_set_tick_period_milliseconds() { return Status.Ok; },
    proxy_get_buffer_bytes(type, start, max, retPtr, retSize) {
        const buf = state.buffers[type];
        if (!buf) return Status.NotFound;
        // Sizes are u32 (usize::MAX arrives as -1).
        return give(buf.subarray(start >>> 0, Math.min(buf.length, (start >>> 0) + (max >>> 0))), retPtr, retSize);
    },
    proxy_set_buffer_bytes(type, start, size, ptr, len) {
        start >>>= 0; size >>>= 0;
        const old = state.buffers[type] || new Uint8Array();
        const data = readBytes(ptr, len);
        const out = new Uint8Array(old.length - Math.min(size, old.length - start) + len);
        out.set(old.subarray(0, start), 0);
        out.set(data, start);
        out.set(old.subarray(Math.min(old.length, start + size)), start + len);
        state.buffers[type] = out;
        return Status.Ok;
    },
    proxy_get_header_map_pairs(type, retPtr, retSize) {
        return give(serializeMap(state.maps[type] || []), retPtr, retSize);
    },
    proxy_set_header_map_pairs(type, ptr, len) { state.maps[type] = deserializeMap(readBytes(ptr, len)); return Status.Ok; },
    proxy_get_header_map_value(type, kp, kl, retPtr, retSize) {
        const key = readStr(kp, kl).toLowerCase();
        const hit = (state.maps[type] || []).find(([k]) => k === key);
        if (!hit) return Status.NotFound;
        return give(enc.encode(hit[1]), retPtr, retSize);
    },
    proxy_replace_header_map_value(type, kp, kl, vp, vl) {
        const key = readStr(kp, kl).toLowerCase();
        const map = (state.maps[type] || []).filter(([k]) => k !== key);
        map.push([key, readStr(vp, vl)]);
        state.maps[type] = map;
        return Status.Ok;
    },
    proxy_add_header_map_value(type, kp, kl, vp, vl) {
        state.maps[type] = [...(state.maps[type] || []), [readStr(kp, kl).toLowerCase(), readStr(vp, vl)]];
        return Status.Ok;
    },
    proxy_remove_header_map_value(type, kp, kl) {
        const key = readStr(kp, kl).toLowerCase();
        state.maps[type] = (state.maps[type] || []).filter(([k]) => k !== key);
        return Status.Ok;
    },
    proxy_get_property(pp, pl, retPtr, retSize) {
        return Status.NotFound;  // Envoy answers "not found" to ngx.* (the host check)
    },
    proxy_set_property() { return Status.Ok; },
    proxy_get_shared_data(kp, kl, retPtr, retSize, retCas) {
        const entry = state.shared.get(readStr(kp, kl));
        if (!entry) return Status.NotFound;
        give(entry.value, retPtr, retSize);
        view().setUint32(retCas, entry.cas, true);
        return Status.Ok;
    },
    proxy_set_shared_data(kp, kl, vp, vl, cas) {
        const key = readStr(kp, kl);
        const entry = state.shared.get(key);
        if (cas !== 0 && entry && entry.cas !== cas) return Status.CasMismatch;
        state.shared.set(key, { value: readBytes(vp, vl), cas: state.casNext++ });
        return Status.Ok;
    },
    proxy_define_metric(type, np, nl, retId) {
        state.metrics.push(readStr(np, nl));
        view().setUint32(retId, state.metrics.length, true);
        return Status.Ok;
    },
    proxy_increment_metric() { return Status.Ok; },
    proxy_record_metric() { return Status.Ok; },
    proxy_get_metric(id, ret) { view().setBigUint64(ret, 0n, true); return Status.Ok; },
    proxy_send_local_response(status, dp, dl, bp, bl) {
        state.reply = { status, body: readStr(bp, bl) };
        return Status.Ok;
    },
    proxy_continue_stream() { return Status.Ok; },
    proxy_close_stream() { return Status.Ok; },
    proxy_http_call(up, ul, hp, hl, bp, bl, tp, tl, timeout, retToken) {
        const headers = deserializeMap(readBytes(hp, hl));
        const path = (headers.find(([k]) => k === ":path") || [])[1];
        const token = state.tokenNext++;
        state.calls.push({ token, path, upstream: readStr(up, ul) });
        view().setUint32(retToken, token, true);
        return Status.Ok;
    },
    proxy_set_effective_context() { return Status.Ok; },
    proxy_done() { return Status.Ok; },
};

const wasi = new WASI({ version: "preview1", env: scenario.env || {}, args: [] });
const module = await WebAssembly.compile(readFileSync(scenario.wasm));
const env = {};
for (const imp of WebAssembly.Module.imports(module)) {
    if (imp.module !== "env" || imp.kind !== "function") continue;
    const impl = host[imp.name];
    const index = callNames.push(imp.name) - 1;
    env[imp.name] = (...args) => {
        counters[callback * 64 + index]++;
        if (!impl) {
            console.error(`host call not implemented here: ${imp.name}`);
            return Status.Unimplemented;
        }
        if (!timingHost) return impl(...args);
        const t = performance.now();
        const result = impl(...args);
        hostMs += performance.now() - t;
        return result;
    };
}
counters = new Uint32Array(CALLBACKS.length * 64);
if (callNames.length > 64) throw new Error("more than 64 host functions");
const instance = await WebAssembly.instantiate(module, { env, wasi_snapshot_preview1: wasi.wasiImport });
exports = instance.exports;
memory = exports.memory;
wasi.initialize(instance);

const ROOT = 1;
const exp = (name, ...args) => {
    const f = exports[name];
    if (!f) throw new Error(`the filter exports no ${name}`);
    return f(...args);
};

// Answers every callout the filter dispatched (discovery, then JWKS), until none is left.
function answerCallouts(ctx) {
    while (state.calls.length) {
        const call = state.calls.shift();
        const answer = Object.entries(scenario.callouts).find(([suffix]) => (call.path || "").endsWith(suffix));
        const [status, body] = answer ? [answer[1].status, answer[1].body] : [404, ""];
        state.maps[Map.CallHeaders] = [[":status", String(status)], ["content-type", "application/json"]];
        state.buffers[Buffer.CallBody] = enc.encode(typeof body === "string" ? body : JSON.stringify(body));
        exp("proxy_on_http_call_response", ctx, call.token, 2, state.buffers[Buffer.CallBody].length, 0);
    }
}

exp("proxy_on_context_create", ROOT, 0);
if (!exp("proxy_on_vm_start", ROOT, 0)) throw new Error("vm start refused");
if (!exp("proxy_on_configure", ROOT, state.buffers[Buffer.PluginConfiguration].length)) {
    throw new Error(`configuration refused: ${JSON.stringify(state.logs)}`);
}
for (let i = 0; i < 3; i++) {
    exp("proxy_on_tick", ROOT);
    answerCallouts(ROOT);
    state.now += 1000000000n;
}

const requestBody = readFileSync(scenario.request.body);
const chunks = scenario.response.chunks.map((c) => enc.encode(c));
const requestHeaders = [...scenario.request.headers, ["content-length", String(requestBody.length)]];
const responseHeaders = scenario.response.headers;
let nextCtx = 2;
const STEPS = ["request_headers", "request_body", "response_headers", "response_body", "log_done"];

// With `evict_bytes`, that much other data is read before each callback (outside its time), as a
// host's own work between callbacks does: the filter then runs with cold caches, as in Envoy.
const evict = new Uint8Array(scenario.evict_bytes || 0);
let evicted = 0;
function evictCaches() {
    for (let i = 0; i < evict.length; i += 64) { evicted += evict[i]; evict[i] = evicted & 255; }
}

// One request through every callback; returns nanoseconds per step.
function oneRequest(timed) {
    const ctx = nextCtx++;
    const times = timed ? new Array(STEPS.length).fill(0) : null;
    const host = timed ? new Array(STEPS.length).fill(0) : null;
    let t0, h0 = 0;
    timingHost = timed;
    // A step's clock and its share of the host's time start together.
    const start = () => { if (timed && evict.length) evictCaches(); h0 = hostMs; t0 = process.hrtime.bigint(); };
    const mark = (i) => {
        if (timed) { const t = process.hrtime.bigint(); times[i] += Number(t - t0); host[i] += (hostMs - h0) * 1e6; }
    };
    state.reply = null;
    state.maps[Map.RequestHeaders] = requestHeaders;
    state.buffers[Buffer.RequestBody] = requestBody;
    exp("proxy_on_context_create", ctx, ROOT);

    callback = at("request_headers");
    start();
    exp("proxy_on_request_headers", ctx, state.maps[Map.RequestHeaders].length, 0);
    mark(0);
    callback = at("request_body");
    start();
    exp("proxy_on_request_body", ctx, requestBody.length, 1);
    mark(1);
    if (state.reply) throw new Error(`refused: ${JSON.stringify(state.reply)} ${JSON.stringify(state.logs.slice(-3))}`);
    callback = at("response_headers");
    state.maps[Map.ResponseHeaders] = responseHeaders;
    start();
    exp("proxy_on_response_headers", ctx, state.maps[Map.ResponseHeaders].length, 0);
    mark(2);
    callback = at("response_body");
    chunks.forEach((chunk, i) => {
        state.buffers[Buffer.ResponseBody] = chunk;
        start();
        exp("proxy_on_response_body", ctx, chunk.length, i === chunks.length - 1 ? 1 : 0);
        mark(3);
    });
    callback = at("log_done");
    start();
    exp("proxy_on_log", ctx);
    exp("proxy_on_done", ctx);
    exp("proxy_on_delete", ctx);
    mark(4);
    callback = at("between");
    state.now += 1000000n;
    timingHost = false;
    return timed ? { times, host } : null;
}

// What timing one host call adds: `bracket` in all, `seen` of it inside the measured interval
// (so counted as the host's). Both are taken off per call, so that neither side keeps the cost
// of the measurement.
function timingCost() {
    const runs = [];
    for (let r = 0; r < 7; r++) {
        const n = 400000;
        let seen = 0;
        const start = performance.now();
        for (let i = 0; i < n; i++) { const t = performance.now(); seen += performance.now() - t; }
        runs.push({ bracket: (performance.now() - start) / n * 1e6, seen: seen / n * 1e6 });
    }
    runs.sort((a, b) => a.bracket - b.bracket);
    return runs[runs.length >> 1];
}

// Counts: one request after warm-up.
for (let i = 0; i < 50; i++) oneRequest(false);
counters.fill(0);
oneRequest(false);
const perRequest = {};
CALLBACKS.forEach((cb, c) => callNames.forEach((name, i) => {
    const n = counters[c * 64 + i];
    if (n) (perRequest[cb] ||= {})[name] = n;
}));
const forwarded = {
    headers: state.maps[Map.RequestHeaders],
    body_bytes: state.buffers[Buffer.RequestBody].length,
};

// Times: the fastest batch (the machine may be shared) and the median batch, each callback's
// time split into the filter's own (in the VM) and this stand-in host's (in its host calls).
const cost = timingCost();
const callsIn = STEPS.map((step) => Object.values(perRequest[step] || {}).reduce((a, n) => a + n, 0));
const requests = scenario.requests || 2000;
const batches = [];
for (let b = 0; b < (scenario.batches || 15); b++) {
    const times = new Array(STEPS.length).fill(0);
    const host = new Array(STEPS.length).fill(0);
    for (let i = 0; i < requests; i++) {
        const r = oneRequest(true);
        r.times.forEach((t, j) => { times[j] += t; });
        r.host.forEach((t, j) => { host[j] += t; });
    }
    batches.push({
        vm: times.map((t, j) => Math.max(0, t - host[j] - callsIn[j] * (cost.bracket - cost.seen)) / requests / 1000),
        host: host.map((t, j) => Math.max(0, t - callsIn[j] * cost.seen) / requests / 1000),
    });
}
const total = (b) => b.reduce((a, c) => a + c, 0);
batches.sort((a, b) => total(a.vm) - total(b.vm));
const steps = (b) => ({ ...Object.fromEntries(STEPS.map((s, i) => [s, Number(b[i].toFixed(2))])), total: Number(total(b).toFixed(2)) });
const [fastest, median] = [batches[0], batches[batches.length >> 1]];
console.log(JSON.stringify({
    host_calls: perRequest,
    forwarded,
    // The filter's own time in the VM per callback, microseconds per request.
    us_fastest: steps(fastest.vm),
    us_median: steps(median.vm),
    // This stand-in host's time inside the host calls, in the same batches.
    us_stand_in_host_fastest: steps(fastest.host),
    us_stand_in_host_median: steps(median.host),
    timing_cost_ns_per_call: { bracket: Number(cost.bracket.toFixed(1)), seen: Number(cost.seen.toFixed(1)) },
    warnings: state.logs.filter(([level]) => level >= 3).slice(0, 5),
}, null, 1));
