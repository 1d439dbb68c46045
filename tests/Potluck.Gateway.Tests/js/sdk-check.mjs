// Usage: node sdk-check.mjs BASE_URL MODEL — exercises the gateway with the official openai package and prints JSON results.
import OpenAI from 'openai';

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: 'unused', timeout: 60_000, maxRetries: 0 });
const out = {};

const chat = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hello from JS' }], max_tokens: 12, temperature: 0 });
out.chat = { text: chat.choices[0].message.content, finish: chat.choices[0].finish_reason, usage: chat.usage, object: chat.object };

let text = '', chunks = 0, usage = null, finish = null, role = null;
const stream = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hello from JS' }], max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true } });
for await (const chunk of stream) {
  chunks++;
  if (chunk.usage) usage = chunk.usage;
  const choice = chunk.choices[0];
  if (!choice) continue;
  role ??= choice.delta.role ?? null;
  text += choice.delta.content ?? '';
  finish ??= choice.finish_reason;
}
out.chatStream = { text, chunks, usage, finish, role };

const completion = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 8, temperature: 0 });
out.completion = { text: completion.choices[0].text, finish: completion.choices[0].finish_reason, usage: completion.usage };

let ctext = '';
const cstream = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 8, temperature: 0, stream: true });
for await (const chunk of cstream) ctext += chunk.choices[0]?.text ?? '';
out.completionStream = { text: ctext };

try {
  await client.chat.completions.create({ model: 'missing-model', messages: [{ role: 'user', content: 'x' }] });
  out.notFound = { status: 0 };
} catch (e) {
  out.notFound = { status: e.status, code: e.code ?? e.error?.code };
}
console.log(JSON.stringify(out));
