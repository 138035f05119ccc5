// Runs a wasm32-wasip1 command in Node's V8 (the engine Envoy embeds), with its arguments:
// cargo's runner for `make unit-wasm` (unit tests compiled for Wasm, with simd128), and
// bench/verify-wasm's runner.
//   node scripts/wasi-run.mjs FILE.wasm [ARGS...]
import { readFileSync } from "node:fs";
import { WASI } from "node:wasi";

const [file, ...args] = process.argv.slice(2);
// The whole filesystem, for tests that read fixtures by absolute path.
const wasi = new WASI({ version: "preview1", args: [file, ...args], env: process.env, preopens: { "/": "/" }, returnOnExit: true });
const module = await WebAssembly.compile(readFileSync(file));
// The filter's library links the Proxy-Wasm host functions; unit tests never call them.
const env = {};
for (const imp of WebAssembly.Module.imports(module)) {
    if (imp.module === "env" && imp.kind === "function") {
        env[imp.name] = () => { throw new Error(`host function ${imp.name} called outside a host`); };
    }
}
const instance = await WebAssembly.instantiate(module, { env, wasi_snapshot_preview1: wasi.wasiImport });
// A test binary of a cdylib crate exports `_initialize` beside `_start`, which node:wasi refuses.
const { _start, memory } = instance.exports;
process.exitCode = wasi.start({ exports: { _start, memory } });
