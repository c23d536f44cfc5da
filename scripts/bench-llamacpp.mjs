// Decode and prompt speed of llama.cpp (the CPU build that node-llama-cpp ships) on a GGUF file,
// greedy, on the same prompt `apigen-mt bench` uses. Prints one JSON line.
// Usage: node bench-llamacpp.mjs MODEL.gguf THREADS GEN_TOKENS
import {getLlama} from "node-llama-cpp";

const [modelPath, threadsArg, genArg] = process.argv.slice(2);
const threads = Number(threadsArg ?? 1);
const genTokens = Number(genArg ?? 128);
const llama = await getLlama({gpu: false, build: "never", maxThreads: threads, logLevel: "error"});
const model = await llama.loadModel({modelPath});
const context = await model.createContext({contextSize: 1024, threads: {ideal: threads, min: threads}});
const sequence = context.getSequence();
const prompt = model.tokenize("Write a short story about a robot who learns to cook. Once upon a time,");
const start = performance.now();
let first = 0;
let count = 0;
for await (const token of sequence.evaluate(prompt, {temperature: 0})) {
  if (count === 0) first = performance.now();
  count += 1;
  if (count >= genTokens) break;
}
const end = performance.now();
console.log(JSON.stringify({
  engine: "llama.cpp", threads, prompt_tokens: prompt.length, gen_tokens: count,
  prompt_ms: +(first - start).toFixed(1),
  decode_tok_per_s: +((count - 1) / ((end - first) / 1000)).toFixed(2),
}));
await context.dispose();
await model.dispose();
await llama.dispose();
