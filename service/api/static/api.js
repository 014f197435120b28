// The service's public API as a browser calls it: fetch, the API key as a bearer token, errors read from the
// one error body, and Server-Sent Events read from a fetch response (EventSource cannot POST or send headers).

const KEY_STORAGE = "janus-serve.api-key";

// The API lives one level above the page (/playground/ -> /): relative, so a proxy prefix keeps working.
export const apiRoot = new URL("../", document.baseURI);

export class ApiError extends Error {
  constructor(status, message, { type = null, details = null, param = null, retryAfter = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
    this.details = details;
    this.param = param;
    this.retryAfter = retryAfter;
  }
}

// sessionStorage: the key lives as long as this tab, and never reaches other tabs or a later visit.
export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

const randomWeightListeners = [];

// Every response carries X-Random-Weights; whoever shows the demo banner listens here.
export function onRandomWeights(listener) {
  randomWeightListeners.push(listener);
}

function noteRandomWeights(response) {
  if (response.headers.get("X-Random-Weights") === "true") {
    for (const listener of randomWeightListeners) listener();
  }
}

// A successful fetch's response; an ApiError carrying the server's own message otherwise.
export async function call(path, { method = "GET", json, signal, withKey = true } = {}) {
  const headers = {};
  if (json !== undefined) headers["Content-Type"] = "application/json";
  const key = apiKey();
  if (withKey && key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(new URL(path, apiRoot), {
    method, headers, signal, body: json === undefined ? undefined : JSON.stringify(json),
  });
  noteRandomWeights(response);
  if (!response.ok) throw await errorOf(response);
  return response;
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's error page): fall back to the status line
  }
  const error = body && typeof body.error === "object" ? body.error : null;
  const message = error && error.message ? error.message : `${response.status} ${response.statusText}`.trim();
  return new ApiError(response.status, message, {
    // the native body names its kind `type`; OpenAI's body (routes under /v1) names it `code`
    type: error ? error.code || error.type : null,
    details: error ? error.details || null : null,
    param: error ? error.param || null : null,  // OpenAI's body: the field at fault
    retryAfter: response.headers.get("Retry-After"),
  });
}

// The error carried inside a stream: the native `error` event's body, or OpenAI's `data: {"error": ...}` (which
// names no status).
export function streamError(data) {
  const error = data && data.error ? data.error : {};
  return new ApiError(error.status || null, error.message || "the server reported an error",
                      { type: error.code || error.type || null, details: error.details || null });
}

// Yields {event, data} for each event of a text/event-stream response: `data` is the parsed JSON, or the raw
// text when it is not JSON (OpenAI's closing `[DONE]`). Stops at the end of the body; an aborted fetch makes
// the read throw an AbortError, which the caller sees.
export async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  let event = "message";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += value;
      const lines = pending.split("\n");
      pending = lines.pop();
      for (const raw of lines) {
        const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
        if (line === "") {
          if (data.length) yield { event, data: parseData(data.join("\n")) };
          event = "message";
          data = [];
        } else if (line.startsWith("event:")) {
          event = line.slice(6).trim();
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        }
        // `id:`, `retry:` and `:` comments carry nothing this page needs
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseData(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

// Requests waiting for free rows on the whole server (GET /metrics), or null when it cannot be read.
export async function queuedRequests(signal) {
  try {
    const text = await (await call("metrics", { signal })).text();
    const match = /^janus_queue_waiting_requests\s+(\S+)/m.exec(text);
    return match ? Math.round(Number(match[1])) : null;
  } catch {
    return null;
  }
}

// A field's complaint in a form's words: "Input should be less than or equal to 16" -> "must be at most 16".
function plainComplaint(message) {
  return message
    .replace(/^Value error, /, "")
    .replace(/^(Input should|must) be less than or equal to /, "must be at most ")
    .replace(/^(Input should|must) be greater than or equal to /, "must be at least ")
    .replace(/^Input should be /, "must be ")
    .replace(/^String should have at least 1 character$/, "must not be empty");
}

// The field names of a request (`parallel_size`, `body.cfg_weight`) replaced by the form's labels for them, where a
// message names them in its text. Only names no reader would take for a word (with an underscore, or the `body.`
// of a location): "the prompt is empty" stays as it is.
function labelled(text, labels) {
  let out = text;
  for (const [field, label] of Object.entries(labels)) {
    const name = field.includes("_") ? `(?:body\\.)?${field}` : `body\\.${field}`;
    out = out.replace(new RegExp(`\\b${name}\\b`, "g"), `“${label}”`);
  }
  return out;
}

// The error in a form's words: each field at fault named by its label (`labels`: request field -> label), as in
// "Images must be at most 16"; fields the form does not have keep the server's name for them.
function inFormTerms(error, labels) {
  const complaint = (field, message) => {
    const label = labels[field];
    if (label) return `${label} ${plainComplaint(message)}`;
    const plain = plainComplaint(message);
    return labelled(field && field !== "body" ? `${field}: ${plain}` : plain, labels);
  };
  if (error.details && error.details.length) {
    return error.details.map((d) => complaint((d.loc || "").replace(/^body\./, ""), d.message)).join("; ");
  }
  // OpenAI's body names one field, `param`, and its message starts with it ("max_tokens: must be ...")
  if (error.param && labels[error.param] && error.message.startsWith(`${error.param}: `)) {
    return complaint(error.param, error.message.slice(error.param.length + 2));
  }
  return labelled(error.message, labels);
}

// An error in plain words for the page; `labels` (request field -> the form's label) words field errors as the
// form that sent the request names its fields.
export function describe(error, labels = {}) {
  if (error instanceof ApiError) {
    const text = inFormTerms(error, labels);
    const hints = {
      401: "Enter the server's API key (button at the top).",
      429: "The server is busy.",
      503: "The server is not ready.",
      504: "The request took too long.",
    };
    const retry = error.retryAfter ? ` Try again in ${error.retryAfter} s.` : "";
    const hint = hints[error.status] ? ` ${hints[error.status]}` : "";
    const end = /[.!?]$/.test(text) ? "" : ".";
    const status = error.status ? ` (${error.status})` : "";
    return `The server said${status}: ${text}${end}${hint}${retry}`;
  }
  if (error instanceof TypeError) {
    return `Could not reach the server (${error.message}). Is it still running?`;
  }
  return String(error && error.message ? error.message : error);
}
