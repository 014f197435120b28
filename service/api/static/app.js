// The page's frame: the demo banner, the model line, the API key and the two tabs.

import { ApiError, apiKey, call, describe, onRandomWeights, setApiKey } from "./api.js";
import { setUpExamples } from "./examples.js";
import { setUpGenerate } from "./generate.js";
import { setUpUnderstand } from "./understand.js";

const $ = (id) => document.getElementById(id);

onRandomWeights(() => {
  $("random-banner").hidden = false;
  document.body.classList.add("random-weights");
});

// --- API key ---------------------------------------------------------------------------------------------------

function openKeyPanel(reason) {
  $("key-reason").textContent = reason;
  $("key-panel").hidden = false;
  $("key-input").value = apiKey();
  $("key-input").focus();
}

function closeKeyPanel() {
  $("key-panel").hidden = true;
  $("key-error").hidden = true;
  $("key-open").focus();
}

function showKeyError(text) {
  $("key-error").textContent = text;
  $("key-error").hidden = false;
}

$("key-open").addEventListener("click", () =>
  openKeyPanel("The API key is kept in this tab only (it is gone when the tab closes) and sent with every request."));
$("key-close").addEventListener("click", closeKeyPanel);
$("key-forget").addEventListener("click", () => {
  setApiKey("");
  $("key-input").value = "";
  loadInfo();
});
$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  setApiKey($("key-input").value.trim());
  if (await loadInfo()) closeKeyPanel();
});
$("key-panel").addEventListener("keydown", (event) => {
  if (event.key === "Escape") closeKeyPanel();
});

const KEY_NEEDED = "This server needs an API key. It is kept in this tab only and sent with every request.";

// Every failed request lands here too: a 401 anywhere means the key is missing or wrong.
function needKey(error) {
  if (!(error instanceof ApiError && error.status === 401)) return;
  openKeyPanel(KEY_NEEDED);
  if (apiKey()) showKeyError(describe(error));
}

// --- model line ------------------------------------------------------------------------------------------------

async function loadInfo() {
  try {
    const body = await (await call("info")).json();
    $("model-line").textContent = `${body.model} · ${body.device} · ${body.dtype}` +
      (body.random_weights ? " · random weights" : "") + (body.description ? " · demo model" : "");
    $("key-error").hidden = true;
    document.dispatchEvent(new CustomEvent("janus:info", { detail: body }));
    return true;
  } catch (error) {
    const keyMissing = error instanceof ApiError && error.status === 401;
    $("model-line").textContent = keyMissing ? "API key needed" : describe(error);
    needKey(error);
    return false;
  }
}

// --- tabs (arrow keys move between them, as for any tab list) ---------------------------------------------------

const tabs = [$("tab-understand"), $("tab-generate")];

function select(tab) {
  for (const other of tabs) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    $(other.getAttribute("aria-controls")).hidden = !selected;
  }
}

for (const tab of tabs) {
  tab.addEventListener("click", () => select(tab));
  tab.addEventListener("keydown", (event) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (!step) return;
    const next = tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length];
    select(next);
    next.focus();
  });
}

// --- start -----------------------------------------------------------------------------------------------------

setUpExamples();
setUpUnderstand({ onError: needKey });
setUpGenerate({ onError: needKey });
// /health needs no key: the demo banner shows even before a key is given.
call("health", { withKey: false }).catch(() => {});
loadInfo();
