// Usage: node messages-check.mjs BASE_URL MODEL — drives /v1/messages with the official @anthropic-ai/sdk package and prints JSON results.
// temperature is not in this SDK's types for the newest models, but the SDK sends the body as given; 0 makes it greedy.
import Anthropic from '@anthropic-ai/sdk';

const [baseURL, model] = process.argv.slice(2);
const client = new Anthropic({ baseURL, apiKey: 'unused', timeout: 60_000, maxRetries: 0 });
const out = {};
const ask = { model, max_tokens: 12, temperature: 0, system: 'Be brief.', messages: [{ role: 'user', content: 'Hello from JS' }] };

const message = await client.messages.create(ask);
out.message = { id: message.id, type: message.type, role: message.role, text: message.content.map(b => b.text ?? '').join(''),
  stop: message.stop_reason, usage: message.usage };

// The SDK's stream helper: events as they come, and the message it accumulates from them.
const events = [];
let streamedText = '';
const stream = client.messages.stream(ask);
stream.on('streamEvent', event => { if (events[events.length - 1] !== event.type) events.push(event.type); });
stream.on('text', delta => { streamedText += delta; });
const final = await stream.finalMessage();
out.stream = { events, text: streamedText, finalText: final.content.map(b => b.text ?? '').join(''), stop: final.stop_reason, usage: final.usage };

// A tool-use round trip: a forced call (tool_choice any), streamed the same, then the tool's result and the answer.
// Small tool: the test model's context is 512 tokens.
const weather = { name: 'weather', description: 'Weather',
  input_schema: { type: 'object', properties: { city: { enum: ['Paris', 'Oslo'] } }, required: ['city'], additionalProperties: false } };
const toolAsk = { model, max_tokens: 100, temperature: 0, tools: [weather], tool_choice: { type: 'any' }, messages: [{ role: 'user', content: 'Weather in Paris?' }] };
const called = await client.messages.create(toolAsk);
const use = called.content.find(b => b.type === 'tool_use');
const streamedCall = await client.messages.stream(toolAsk).finalMessage();
const streamedUse = streamedCall.content.find(b => b.type === 'tool_use');
const history = [...toolAsk.messages, { role: 'assistant', content: called.content },
  { role: 'user', content: [{ type: 'tool_result', tool_use_id: use?.id, content: '18 C' }] }];
const answer = await client.messages.create({ model, max_tokens: 12, temperature: 0, messages: history });
out.tools = { stop: called.stop_reason, name: use?.name, input: use?.input, id: use?.id,
  streamedStop: streamedCall.stop_reason, streamedInput: streamedUse?.input,
  answerStop: answer.stop_reason, answerText: answer.content.map(b => b.text ?? '').join(''), answerInput: answer.usage.input_tokens, callInput: called.usage.input_tokens };

try {
  await client.messages.create({ ...ask, model: 'missing-model' });
  out.notFound = { status: 0 };
} catch (e) {
  out.notFound = { status: e.status, type: e.error?.error?.type ?? e.type ?? null };
}
try {
  await client.messages.create({ ...ask, max_tokens: 0 });
  out.badRequest = { status: 0 };
} catch (e) {
  out.badRequest = { status: e.status, type: e.error?.error?.type ?? null, message: e.error?.error?.message ?? String(e.message) };
}
console.log(JSON.stringify(out));
