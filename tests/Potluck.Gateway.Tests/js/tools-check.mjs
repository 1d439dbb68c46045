// Usage: node tools-check.mjs BASE_URL MODEL — a tool-call round trip with the official openai package, streamed and not; prints JSON.
import OpenAI from 'openai';

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: 'unused', timeout: 60_000, maxRetries: 0 });
const tools = [{
  type: 'function',
  function: { name: 'get_weather', description: 'Weather in a city', parameters: { type: 'object', properties: { city: { enum: ['Paris', 'Rome'] } }, required: ['city'] } },
}];
const messages = [{ role: 'user', content: 'Weather in Rome?' }];
const out = {};

const call = await client.chat.completions.create({ model, messages, tools, tool_choice: 'required', parallel_tool_calls: false, max_tokens: 96, temperature: 0 });
const choice = call.choices[0];
out.call = { finish: choice.finish_reason, toolCalls: choice.message.tool_calls, content: choice.message.content };

const calls = {};
let finish = null;
const stream = await client.chat.completions.create({ model, messages, tools, tool_choice: 'required', parallel_tool_calls: false, max_tokens: 96, temperature: 0, stream: true });
for await (const chunk of stream) {
  const c = chunk.choices[0];
  if (!c) continue;
  for (const part of c.delta.tool_calls ?? []) {
    calls[part.index] ??= { id: '', name: '', arguments: '' };
    if (part.id) calls[part.index].id = part.id;
    if (part.function?.name) calls[part.index].name += part.function.name;
    calls[part.index].arguments += part.function?.arguments ?? '';
  }
  finish ??= c.finish_reason;
}
out.stream = { finish, calls: Object.values(calls) };

const first = choice.message.tool_calls[0];
const answer = await client.chat.completions.create({
  model, max_tokens: 8, temperature: 0,
  messages: [...messages, choice.message, { role: 'tool', tool_call_id: first.id, content: '25 C' }],
});
out.answer = { finish: answer.choices[0].finish_reason, content: answer.choices[0].message.content, toolCalls: answer.choices[0].message.tool_calls ?? null };
console.log(JSON.stringify(out));
