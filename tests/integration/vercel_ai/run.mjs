// The Vercel AI SDK's default OpenAI provider (openai("gpt-4o"): the Responses API) through the
// router: generateText, then streamText, printing one JSON line of what the SDK reported.
// Driven by tests/integration/test_vercel_ai.py through the environment:
//   ROUTER_URL     the router's base URL (the SDK calls ROUTER_URL + "/v1/responses")
//   PLAIN_PROMPT   prompt for generateText (skipped when empty)
//   STREAM_PROMPT  prompt for streamText (skipped when empty)
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText } from "ai";

const routerUrl = process.env.ROUTER_URL;
if (!routerUrl) {
  throw new Error("ROUTER_URL is not set");
}
const openai = createOpenAI({ baseURL: routerUrl + "/v1", apiKey: "vercel-ai-test-key" });
const model = openai("gpt-4o");

// An error as the SDK gave it: an Error (name, message), or the provider's stream-error object
// (message, code; no name).
function describe(error) {
  if (error == null) return null;
  return { name: error.name ?? null, message: String(error.message ?? error), code: error.code ?? null };
}

async function plain(prompt) {
  const result = await generateText({ model, prompt, maxRetries: 0 });
  return {
    text: result.text,
    usage: result.usage,
    finishReason: result.finishReason,
    responseId: result.response.id,
  };
}

async function streamed(prompt) {
  const errors = [];
  // Errors in a stream reach onError (the SDK does not throw them into textStream).
  const result = streamText({ model, prompt, maxRetries: 0, onError: ({ error }) => errors.push(error) });
  const deltas = [];
  for await (const delta of result.textStream) {
    deltas.push(delta);
  }
  let usage = null;
  let finishReason = null;
  let settled = null;
  try {
    usage = await result.usage;
    finishReason = await result.finishReason;
  } catch (error) {
    settled = error;
  }
  return {
    text: deltas.join(""),
    deltas,
    usage,
    finishReason,
    errors: errors.map(describe),
    settleError: describe(settled),
  };
}

const out = { plain: null, stream: null };
if (process.env.PLAIN_PROMPT) out.plain = await plain(process.env.PLAIN_PROMPT);
if (process.env.STREAM_PROMPT) out.stream = await streamed(process.env.STREAM_PROMPT);
process.stdout.write(JSON.stringify(out) + "\n");
