// "Ask about images": pick or drop images, ask, watch the answer stream in, ask follow-ups.
//
// POST /v1/chat/completions (OpenAI-compatible) with the whole conversation in `messages` (images as data: URLs in
// `image_url` parts of the user turns) and `stream: true`: `chat.completion.chunk` events carry the text as it is
// written (`choices[0].delta.content`), the last one its `finish_reason`, then one with the usage (asked for with
// `stream_options.include_usage`), then `data: [DONE]`. A failure mid-stream comes as `data: {"error": ...}`.

import { call, sseEvents, streamError } from "./api.js";
import { $, clearError, el, isAbort, readAsDataUrl, setBusy, showError, waitingLine } from "./ui.js";

function userMessage(text, images) {
  if (!images.length) return { role: "user", content: text };
  const parts = images.map((image) => ({ type: "image_url", image_url: { url: image.url } }));
  return { role: "user", content: [...parts, { type: "text", text }] };
}

// The request's fields as the form labels them, for the server's messages ("Temperature must be at most 2").
const LABELS = { temperature: "Temperature", max_tokens: "Max tokens" };

export function setUpUnderstand({ onError }) {
  const form = $("understand-form");
  const question = $("question");
  const files = $("understand-files");
  const zone = $("drop-zone");
  const picked = [];  // {name, url} for the next question
  let turns = [];  // {question, images, answer} of the conversation so far
  let running = null;  // the AbortController of the request in flight
  let model = null;  // the served model's name, from /info

  document.addEventListener("janus:info", ({ detail }) => {
    model = detail.model;
  });
  // a picture from elsewhere on the page (the demo model's example picture)
  document.addEventListener("janus:add-image", ({ detail }) => {
    picked.push(detail);
    renderPicked();
  });

  function renderPicked() {
    const list = $("picked");
    list.replaceChildren();
    picked.forEach((image, index) => {
      const remove = el("button", { type: "button", class: "remove", "aria-label": `Remove ${image.name}`,
                                    text: "×" });
      remove.addEventListener("click", () => {
        picked.splice(index, 1);
        renderPicked();
        files.focus();
      });
      list.append(el("li", {}, el("img", { src: image.url, alt: image.name }), remove));
    });
  }

  async function add(fileList) {
    for (const file of fileList) {
      picked.push({ name: file.name || "pasted image", url: await readAsDataUrl(file) });
    }
    renderPicked();
  }

  files.addEventListener("change", async () => {
    await add(files.files);
    files.value = "";
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    add(event.dataTransfer.files);
  });

  function bubble(role, text, images = []) {
    const log = $("conversation");
    log.querySelector(".empty-hint")?.remove();
    const thumbs = images.length
      ? el("ul", { class: "thumbs small-thumbs" }, ...images.map((i) => el("li", {}, el("img", { src: i.url, alt: i.name }))))
      : "";
    const body = el("p", { class: "text", text });
    const node = el("div", { class: `turn ${role}` }, el("span", { class: "who", text: role === "user" ? "You" : "Janus" }),
                    thumbs, body);
    log.append(node);
    node.scrollIntoView({ block: "end" });
    return node;
  }

  function doneLine(finishReason, usage, seconds) {
    const end = finishReason === "length" ? "stopped at the token limit" : "complete";
    const tokens = usage ? `${usage.completion_tokens} tokens` : "answered";
    return `Done: ${tokens} in ${seconds.toFixed(1)} s (${end}).`;
  }

  function showHint(text) {
    $("conversation").replaceChildren(el("p", { class: "muted empty-hint", text }));
  }

  function requestBody(text, images) {
    // The conversation so far (answered turns only), then the new question: the server keeps nothing between
    // requests, so every follow-up carries the history.
    const messages = turns.flatMap((turn) => [userMessage(turn.question, turn.images),
                                              { role: "assistant", content: turn.answer }]);
    messages.push(userMessage(text, images));
    const body = { messages, stream: true, stream_options: { include_usage: true } };
    if (model) body.model = model;
    const temperature = $("u-temperature").value;
    const maxTokens = $("u-max-tokens").value;
    if (temperature !== "") body.temperature = Number(temperature);
    if (maxTokens !== "") body.max_tokens = Number(maxTokens);
    return body;
  }

  async function ask() {
    const status = $("understand-status");
    const errorLine = $("understand-error");
    clearError(errorLine);
    const text = question.value;
    const newImages = picked.splice(0);
    renderPicked();
    question.value = "";
    const userTurn = bubble("user", text, newImages);
    const answer = bubble("assistant", "");
    const out = answer.querySelector(".text");
    answer.classList.add("writing");

    running = new AbortController();
    setBusy($("ask"), $("understand-cancel"), true);
    const stopWaiting = waitingLine(status, running.signal);
    const started = performance.now();
    let finishReason = null;
    let usage = null;
    try {
      const response = await call("v1/chat/completions", { method: "POST", json: requestBody(text, newImages),
                                                           signal: running.signal });
      for await (const { data } of sseEvents(response)) {
        stopWaiting();
        if (data === "[DONE]") break;
        if (data.error) throw streamError(data);
        for (const choice of data.choices || []) {
          if (choice.delta && choice.delta.content) out.textContent += choice.delta.content;
          if (choice.finish_reason) finishReason = choice.finish_reason;
        }
        if (data.usage) usage = data.usage;
        status.textContent = "Writing…";
      }
      if (!finishReason) throw new Error("The answer stopped before it was complete (the connection closed).");
      status.textContent = doneLine(finishReason, usage, (performance.now() - started) / 1000);
      turns.push({ question: text, images: newImages, answer: out.textContent });
    } catch (error) {
      // Nothing of a failed or cancelled turn stays: its question and images go back for another try.
      userTurn.remove();
      answer.remove();
      if (!turns.length) showHint("Pick or drop one or more images, then ask a question about them.");
      if (isAbort(error)) {
        status.textContent = "Cancelled.";
      } else {
        status.textContent = "";
        showError(errorLine, error, LABELS);
        onError(error);
      }
      if (!question.value) question.value = text;
      picked.unshift(...newImages);
      renderPicked();
    } finally {
      stopWaiting();
      answer.classList.remove("writing");
      running = null;
      setBusy($("ask"), $("understand-cancel"), false);
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!running) ask();
  });
  question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  $("understand-cancel").addEventListener("click", () => running?.abort());
  $("new-conversation").addEventListener("click", () => {
    running?.abort();
    turns = [];
    showHint("New conversation: pick or drop images, then ask.");
    $("understand-status").textContent = "";
    clearError($("understand-error"));
    question.focus();
  });
}
