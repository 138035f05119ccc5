// Runs the wasm32-wasip1 build of the harness under V8 (node:wasi): node run.mjs [iterations]
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import { argv } from "node:process";

const path = process.env.WASM ?? new URL("target/wasm32-wasip1/release/verify-wasm.wasm", import.meta.url);
const wasi = new WASI({ version: "preview1", args: ["verify-wasm", ...argv.slice(2)], env: {} });
const module = await WebAssembly.compile(await readFile(path));
// proxy-wasm host functions are never called by the harness; stub any the module imports.
const imports = { wasi_snapshot_preview1: wasi.wasiImport };
for (const imp of WebAssembly.Module.imports(module)) {
  if (imp.kind === "function" && !(imp.module in imports && imp.name in imports[imp.module])) {
    (imports[imp.module] ??= {})[imp.name] = () => { throw new Error(`host call ${imp.module}.${imp.name}`); };
  }
}
const instance = await WebAssembly.instantiate(module, imports);
// The gateway exports proxy-wasm's `_initialize` too; start the command through `_start` alone.
const { _start, memory } = instance.exports;
process.exitCode = wasi.start({ exports: { _start, memory } });
