// Small pieces both tabs use: element building, the busy state of a form, the "waiting" line, error lines.

import { describe, queuedRequests } from "./api.js";

export const $ = (id) => document.getElementById(id);

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

// While a request runs its start button is disabled and its cancel button enabled (and the other way round).
export function setBusy(start, cancel, busy) {
  start.disabled = busy;
  cancel.disabled = !busy;
  start.closest("form").setAttribute("aria-busy", String(busy));
}

// `labels`: request field -> the form's label for it, so that the message names what the user sees.
export function showError(node, error, labels = {}) {
  node.textContent = describe(error, labels);
  node.hidden = false;
}

export function clearError(node) {
  node.textContent = "";
  node.hidden = true;
}

// Until the first event of a stream arrives the request is queued (or its prompt is being read): say so, with the
// server's queue length from /metrics once a second. Returns the function that stops it.
export function waitingLine(status, signal) {
  let stopped = false;
  status.textContent = "Waiting for the server…";
  const poll = async () => {
    while (!stopped && !signal.aborted) {
      const queued = await queuedRequests(signal);
      if (stopped || signal.aborted) return;
      status.textContent = queued
        ? `Waiting in the queue: ${queued} request${queued === 1 ? "" : "s"} waiting for free rows on the server…`
        : "Waiting for the server…";
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  };
  poll();
  return () => {
    stopped = true;
  };
}

export function isAbort(error) {
  return error && error.name === "AbortError";
}

// Files picked or dropped, as data: URLs (the API takes them as they are).
export function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}
