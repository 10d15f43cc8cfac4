// The OpenAI Node SDK against cortex: run by test_openai_node.py, which checks what this prints
// (one JSON object). HELEXA_BASE_URL and HELEXA_API_KEY say where and who.
const OpenAI = require("openai");

async function main() {
  const client = new OpenAI({
    baseURL: process.env.HELEXA_BASE_URL,
    apiKey: process.env.HELEXA_API_KEY,
    maxRetries: 0,
  });
  const model = "helexa/small";
  const messages = [{ role: "user", content: "Hello" }];
  const out = {};

  const reply = await client.chat.completions.create({ model, messages });
  out.chat = reply.choices[0].message.content;
  out.chatUsage = reply.usage.total_tokens;

  // The README loop: choices[0] on every chunk.
  out.streamed = "";
  out.streamChunks = 0;
  for await (const chunk of await client.chat.completions.create({ model, messages, stream: true })) {
    out.streamed += chunk.choices[0].delta.content || "";
    out.streamChunks += 1;
  }

  const withUsage = [];
  const stream = await client.chat.completions.create({
    model,
    messages,
    stream: true,
    stream_options: { include_usage: true },
  });
  for await (const chunk of stream) withUsage.push(chunk);
  out.usageChunks = withUsage.filter((c) => c.usage).map((c) => [c.choices.length, c.usage]);
  out.lastHasUsage = withUsage[withUsage.length - 1].usage !== undefined;

  out.models = [];
  for await (const m of client.models.list()) out.models.push(m.id);
  const one = await client.models.retrieve(model);
  out.retrieved = [one.id, one.object, one.alias_of];

  const emb = await client.embeddings.create({ model, input: ["a", "b"] });
  out.embeddings = emb.data.map((d) => d.embedding.length);

  const resp = await client.responses.create({ model, input: "Hello" });
  out.response = [resp.status, resp.output_text];

  out.responseEvents = [];
  for await (const ev of await client.responses.create({ model, input: "Hi", stream: true })) {
    out.responseEvents.push(ev.type);
  }
  const helper = client.responses.stream({ model, input: "Hi" });
  let deltas = "";
  helper.on("response.output_text.delta", (ev) => (deltas += ev.delta));
  const final = await helper.finalResponse();
  out.responseStream = [deltas, final.status, final.output_text];

  try {
    await client.models.retrieve("helexa/none");
    out.missing = "found";
  } catch (e) {
    out.missing = [e.status, e.code];
  }
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
