// tools/list and a trivial call over stdio through the TypeScript SDK's Client, the client Claude Desktop and
// Claude Code are built on; run by bench/bench_generate.py (d). One JSON line per figure on stdout.
//   node bench/ts/tools_list.mjs PYTHON REPO [ROUNDS]   (LIMNER_* settings come from the environment)
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [python, repo, rounds = "300"] = process.argv.slice(2);
const transport = new StdioClientTransport({
  command: python,
  args: ["-m", "server.cli", "serve"],
  cwd: repo,
  env: process.env,
  stderr: "ignore",
});
const client = new Client({ name: "limner-bench-ts", version: "1" });
await client.connect(transport);

const ms = async (work) => {
  const started = performance.now();
  await work();
  return performance.now() - started;
};
const p50 = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  return (sorted[(sorted.length - 1) >> 1] + sorted[sorted.length >> 1]) / 2;
};
const emit = (name, value, target, note) =>
  console.log(JSON.stringify({ name, value: Math.round(value * 1000) / 1000, unit: "ms", target, note }));

// the first listing compiles each output schema's validator (AJV); later ones find it by the schema's $id
const first = await ms(() => client.listTools());
const lists = [];
const calls = [];
for (let i = 0; i < Number(rounds) + 20; i++) {
  const listed = await ms(() => client.listTools());
  const called = await ms(() => client.callTool({ name: "jobs", arguments: { action: "list" } }));
  if (i >= 20) {
    lists.push(listed);
    calls.push(called);
  }
}
const note = "the TypeScript SDK's Client (Claude Desktop, Claude Code)";
emit("tools_list_ts_stdio_first", first, null, `${note}: the first listing compiles the output schemas`);
emit("tools_list_ts_stdio_p50", p50(lists), "<= 5", note);
emit("trivial_call_ts_stdio_p50", p50(calls), null, note);
await client.close();
