// Runs the wasm32-wasip1 build of the harness under V8: node run.mjs [iterations]
// (WASM=/path/other.wasm for another build). The runner is scripts/wasi-run.mjs, the one
// `make unit-wasm` uses.
import { fileURLToPath } from "node:url";

const wasm = process.env.WASM ?? fileURLToPath(new URL("target/wasm32-wasip1/release/verify-wasm.wasm", import.meta.url));
process.argv.splice(2, 0, wasm);
await import("../../scripts/wasi-run.mjs");
