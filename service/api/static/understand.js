// "Ask about images": pick or drop images, ask, watch the answer stream in, ask follow-ups.
//
// POST /understand with `stream: true`: `delta` events carry the text as it is written, then one `done` event
// (or one `error` event). Each question is answered from the conversation's images.

import { call, sseEvents, streamError } from "./api.js";
import { $, clearError, el, isAbort, readAsDataUrl, setBusy, showError, waitingLine } from "./ui.js";

const IMAGE_TAG = "<image_placeholder>";

export function setUpUnderstand({ onError }) {
  const form = $("understand-form");
  const question = $("question");
  const files = $("understand-files");
  const zone = $("drop-zone");
  const picked = [];  // {name, url} for the next question
  let turns = [];  // {question, images, answer} of the conversation so far
  let running = null;  // the AbortController of the request in flight

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

  function doneLine(data) {
    const end = data.finish_reason === "length" ? "stopped at the token limit" : "complete";
    const sampled = Number($("u-temperature").value) > 0 ? `, seed ${data.seed}` : "";  // greedy needs no seed
    return `Done: ${data.usage.completion_tokens} tokens in ${data.timings.total_s.toFixed(1)} s (${end}${sampled}).`;
  }

  function showHint(text) {
    $("conversation").replaceChildren(el("p", { class: "muted empty-hint", text }));
  }

  function requestBody(text, images) {
    // Several images need one tag each in the question; put them in front when the question has none.
    const tagged = images.length > 1 && !text.includes(IMAGE_TAG)
      ? `${images.map(() => IMAGE_TAG).join("\n")}\n${text}` : text;
    const body = { question: tagged, images: images.map((image) => image.url), stream: true };
    const temperature = $("u-temperature").value;
    const maxTokens = $("u-max-tokens").value;
    if (temperature !== "") body.temperature = Number(temperature);
    if (maxTokens !== "") body.max_new_tokens = Number(maxTokens);
    return body;
  }

  async function ask() {
    const status = $("understand-status");
    const errorLine = $("understand-error");
    clearError(errorLine);
    const text = question.value;
    const newImages = picked.splice(0);
    const images = [...turns.flatMap((turn) => turn.images), ...newImages];
    renderPicked();
    question.value = "";
    const userTurn = bubble("user", text, newImages);
    const answer = bubble("assistant", "");
    const out = answer.querySelector(".text");
    answer.classList.add("writing");

    running = new AbortController();
    setBusy($("ask"), $("understand-cancel"), true);
    const stopWaiting = waitingLine(status, running.signal);
    let finished = false;
    try {
      const response = await call("understand", { method: "POST", json: requestBody(text, images),
                                                  signal: running.signal });
      for await (const { event, data } of sseEvents(response)) {
        stopWaiting();
        if (event === "delta") {
          out.textContent += data.text;
          status.textContent = "Writing…";
        } else if (event === "done") {
          out.textContent = data.text;
          status.textContent = doneLine(data);
          finished = true;
        } else if (event === "error") {
          throw streamError(data);
        }
      }
      if (!finished) throw new Error("The answer stopped before it was complete (the connection closed).");
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
        showError(errorLine, error);
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
